#!/usr/bin/env bash
# Create (or refresh) an overlay of a test environment that adds torchvision, for the tests of
# transformers' video processors only.
#   bash scripts/setup_vision_overlay.sh BASE_VENV OVERLAY_VENV
#
# Why a separate overlay: transformers' video processors (VideoLlavaVideoProcessor) need torchvision.
# On the project's machines the registry's torchvision wheels are CUDA builds, whose import fails
# with the CPU torch (`operator torchvision::nms does not exist`); their pure-Python parts work once
# the two fake-op registrations of the compiled operators are guarded (below). Installing torchvision
# into the base environments would also switch transformers 5's image processors to their
# torchvision backend, whose pixel values differ slightly from the PIL backend the other tests
# compare across majors. So the overlay sees every package of BASE_VENV (a .pth file adds its
# site-packages) plus torchvision in its own. On a normal machine torchvision imports unguarded and
# nothing is patched. None of this is in the package.
set -euo pipefail
base=${1:?usage: setup_vision_overlay.sh BASE_VENV OVERLAY_VENV}
overlay=${2:?usage: setup_vision_overlay.sh BASE_VENV OVERLAY_VENV}
torchvision_spec=${TORCHVISION_SPEC-torchvision==0.28.0}

base_site=$("$base/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -x "$overlay/bin/python" ] || "$base/bin/python" -m venv --without-pip "$overlay"
overlay_site=$("$overlay/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# `import site` lines in a .pth run at start-up: the base's own .pth files (editable installs) apply too.
echo "import site; site.addsitedir('$base_site')" > "$overlay_site/base_environment.pth"
if ! "$overlay/bin/python" -c 'import torchvision' 2>/dev/null; then
    "$base/bin/python" -m pip --disable-pip-version-check -q install --no-deps --target "$overlay_site" \
        --upgrade "$torchvision_spec" 2>&1 | grep -v "^WARNING: \(Target directory\|Location\)" || true
    if ! "$overlay/bin/python" -c 'import torchvision' 2>/dev/null; then
        sed -i -E 's/^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))/' \
            "$overlay_site/torchvision/_meta_registrations.py"
    fi
fi
"$overlay/bin/python" -c "import torchvision, transformers; transformers.VideoLlavaVideoProcessor(); print('ready:', '$overlay', 'torchvision', torchvision.__version__, 'transformers', transformers.__version__)"
