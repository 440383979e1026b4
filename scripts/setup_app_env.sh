#!/usr/bin/env bash
# Create (or refresh) the environment that tests `llava-prumerge app` in a real browser and the Space folder
# `llava-prumerge space` writes (tests/app, run with PRUMERGE_TEST_APP=1): the Space's own requirements.txt,
# with llava-prumerge taken from a wheel of this checkout (pip install --find-links: the Space names the
# release on PyPI, which this checkout may not be yet), plus Selenium and pytest; and Debian's chromium and
# chromium-driver, installed with apt when missing (a browser download of Selenium's or Playwright's own
# cannot be fetched here). A second run with the checkout unchanged only checks.
#   bash scripts/setup_app_env.sh VENV_DIR
# SHARED_TORCH_VENV: read torch from that environment instead (see scripts/shared_torch.sh).
set -euo pipefail
venv=${1:?usage: setup_app_env.sh VENV_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/shared_torch.sh"

if ! command -v chromium > /dev/null || ! command -v chromedriver > /dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver > /dev/null
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
quiet() { grep -v "^WARNING: Location" || true; }
use_shared_torch "$venv" "${TORCH_SPEC-torch==2.13.0}" || true
# The wheel of this checkout, rebuilt when a tracked or new file changed since the last build.
wheels="$venv/wheels"
stamp=$(cd "$root" && { git rev-parse HEAD; git status --porcelain --untracked-files=all; git diff; } | sha256sum | cut -c1-16)
if [ "$(cat "$wheels/stamp" 2> /dev/null)" != "$stamp" ]; then
    rm -rf "$wheels"
    pip wheel --no-deps -w "$wheels" "$root" 2>&1 | quiet
    pip install --force-reinstall --no-deps "$wheels"/llava_prumerge-*.whl 2>&1 | quiet
    echo "$stamp" > "$wheels/stamp"
fi
# The Space's requirements.txt, as `llava-prumerge space` writes it (the writer needs none of the dependencies;
# -P: the installed package, not the checkout in the current folder).
"$venv/bin/python" -P -c "from llava_prumerge.app.space import space_requirements; print(space_requirements(), end='')" \
    > "$venv/space-requirements.txt"
pip install --find-links "$wheels" -r "$venv/space-requirements.txt" "selenium>=4.20" "pytest>=8" 2>&1 | quiet
"$venv/bin/python" -P -c "import gradio, selenium, llava_prumerge; print('ready:', '$venv', 'gradio', gradio.__version__, 'selenium', selenium.__version__, 'llava-prumerge', llava_prumerge.__version__, 'from', llava_prumerge.__file__)"
