"""Measurements and estimates: `bench` (measured speed and memory), `analyze` (a roofline estimate of
prefill cost) and the reducer micro-benchmark."""
