# Sourced by the setup scripts (not run). With SHARED_TORCH_VENV set, as scripts/test.sh sets it, torch is
# installed once, into that environment, and each environment the scripts build reads it through a .pth
# file instead of holding its own copy (750 MB each; the test environments share one). Unset, every
# environment installs its own torch, as a user's `bash scripts/setup_env.sh .venvs/demo` does.

# use_shared_torch VENV TORCH_SPEC: link VENV to the shared torch (installing it there first, once); fails
# (status 1) when SHARED_TORCH_VENV is unset or TORCH_SPEC is empty, so the caller installs its own.
use_shared_torch() {
    local venv=$1 spec=$2 shared_site site
    [ -n "${SHARED_TORCH_VENV:-}" ] && [ -n "$spec" ] || return 1
    [ -x "$SHARED_TORCH_VENV/bin/python" ] || python3 -m venv "$SHARED_TORCH_VENV"
    if ! "$SHARED_TORCH_VENV/bin/python" -c "import torch" 2>/dev/null; then
        "$SHARED_TORCH_VENV/bin/python" -m pip --disable-pip-version-check -q install "$spec" 2>&1 |
            grep -v "^WARNING: Location" || true
    fi
    shared_site=$("$SHARED_TORCH_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # `import site` lines in a .pth run at start-up; pip then sees torch as installed and keeps it there.
    echo "import site; site.addsitedir('$shared_site')" > "$site/shared_torch.pth"
}
