"""How often a forward makes the host wait for the device: once per forward, fixed budget or adaptive.

Every read of a device value on the host (`.tolist()`, `.item()`, `bool(tensor)`, `nonzero`) is a
synchronization. The reducer and the model queue their finite checks, an adaptive selection's counts and the
prompt's placeholder layout in one `HostReads`, fetched in one copy. On a CPU nothing actually waits, so
these tests count the reads themselves: the copies `HostReads` makes, and any read made elsewhere by the
reducer or the model (compaction then works on the host copies, which is not a synchronization). They run
the accelerator's path (`host_reads_are_free` is False), where an adaptive selection reads its counts with
the finished tokens; a CPU reads them at once and merges only the selected slots, with the same results.
"""

import traceback
from pathlib import Path

import pytest
import torch

import llava_prumerge.modeling as modeling
from llava_prumerge.errors import NonFiniteError
from llava_prumerge.modeling import token_reduction
from llava_prumerge.modeling.token_reduction import HostReads, batched_host_reads, read_back

READ_METHODS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero")
HOST_SIDE = {"compaction.py"}  # works on the host copies HostReads returns
METHODS = {
    "fixed budget": {"token_reduction": "prumerge_plus", "adaptive": False, "num_visual_tokens": 24},
    "adaptive prumerge": {"token_reduction": "prumerge"},
    "adaptive prumerge_plus": {"token_reduction": "prumerge_plus"},
}


class CountedReads:
    """The host reads of one block: `HostReads` copies, and reads made by the package's code elsewhere."""

    def __init__(self, monkeypatch):
        self.transfers, self.stray = 0, []
        package = str(Path(modeling.__file__).parent)
        counted = self

        class Counting(HostReads):
            def read(self):
                before = self.transfers
                try:
                    super().read()
                finally:
                    counted.transfers += self.transfers - before

        monkeypatch.setattr(token_reduction, "HostReads", Counting)
        for name in READ_METHODS:
            original = getattr(torch.Tensor, name)

            def counting(tensor, *args, _original=original, _name=name, **kwargs):
                caller = traceback.extract_stack(limit=2)[0]
                file = Path(caller.filename)
                # HostReads.read's own copy is counted above; compaction works on its host copies
                if (
                    caller.filename.startswith(package)
                    and file.name not in HOST_SIDE
                    and caller.name != "read"
                ):
                    counted.stray.append(f"{_name} in {file.name}:{caller.lineno}")
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counting)


@pytest.fixture
def counted(monkeypatch):
    monkeypatch.setattr(token_reduction, "host_reads_are_free", lambda device: False)  # as on an accelerator
    return lambda: CountedReads(monkeypatch)


@pytest.mark.parametrize("method", METHODS)
def test_a_llava_forward_reads_from_the_device_once(tester, counted, method):
    model = tester.get_model(seed=1, **METHODS[method])
    batch = tester.prepare_inputs(tester.images(2), ["USER: <image>\nWhat is it? ASSISTANT:"] * 2)
    with torch.no_grad():
        expected = model(**batch).logits
        reads = counted()
        logits = model(**batch).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    assert (reads.transfers, reads.stray) == (1, [])


@pytest.mark.parametrize("method", METHODS)
def test_a_video_llava_forward_reads_once_per_modality_it_reduces_adaptively(video_tester, counted, method):
    """Images and videos go through separate reducer calls: an adaptive selection is read in each, the fixed
    path still reads once."""
    model = video_tester.get_model(seed=3, **METHODS[method])
    prompts = [
        "USER: <video>\nWhat happens? ASSISTANT:",
        "USER: <image>\nThis, then <video>\nwhich first? ASSISTANT:",
    ]
    batch = video_tester.prepare_inputs(prompts, images=video_tester.images(1), videos=video_tester.clips(2))
    with torch.no_grad():
        reads = counted()
        model(**batch)
    assert reads.stray == []
    assert reads.transfers == (1 if method == "fixed budget" else 2)


@pytest.mark.parametrize("method", METHODS)
def test_generate_reads_twice_once_for_its_compaction_and_once_in_the_prefill(tester, counted, method):
    model = tester.get_model(seed=1, **METHODS[method])
    batch = tester.prepare_inputs(tester.images(1), ["USER: <image>\nWhat is it? ASSISTANT:"])
    with torch.no_grad():
        reads = counted()
        model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert (reads.transfers, reads.stray) == (2, [])


@pytest.mark.parametrize("method", METHODS)
def test_the_accelerators_path_and_the_cpus_give_the_same_outputs(tester, monkeypatch, method):
    """Planned over every slot (an accelerator's path) or over the selected ones (a CPU's): the same tokens."""
    model = tester.get_model(seed=1, **METHODS[method])
    batch = tester.prepare_inputs(tester.images(2), ["USER: <image>\nWhat is it? ASSISTANT:"] * 2)
    with torch.no_grad():
        on_cpu = model(**batch)
        monkeypatch.setattr(token_reduction, "host_reads_are_free", lambda device: False)
        as_on_accelerator = model(**batch)
    assert as_on_accelerator.visual_token_counts == on_cpu.visual_token_counts
    torch.testing.assert_close(as_on_accelerator.logits, on_cpu.logits, rtol=0, atol=0)
    torch.testing.assert_close(
        as_on_accelerator.visual_token_centers, on_cpu.visual_token_centers, rtol=0, atol=0
    )


def test_a_failed_check_raises_at_the_batched_read_with_its_own_message():
    features = torch.randn(1, 4, 3)
    features[0, 1, 0] = float("nan")
    with batched_host_reads() as reads:
        token_reduction.raise_if_not_finite(torch.ones(3), "ones are fine")
        token_reduction.raise_if_not_finite(features, "features contain NaN")
        assert reads.transfers == 0  # queued, not read yet
        with pytest.raises(NonFiniteError, match="features contain NaN"):
            read_back(torch.tensor([2, 3]))
        assert reads.transfers == 1


def test_checks_left_unread_are_read_when_the_block_ends():
    with pytest.raises(NonFiniteError, match="inf here"), batched_host_reads():
        token_reduction.raise_if_not_finite(torch.tensor([float("inf")]), "inf here")


def test_values_come_back_in_order_from_one_copy():
    with batched_host_reads() as reads:
        first = reads.queue(torch.tensor([[1, 2], [3, 4]]))
        second = reads.queue(torch.tensor([True, False]))
        assert reads.value(second) == [1, 0] and reads.value(first) == [1, 2, 3, 4]
        assert reads.transfers == 1
