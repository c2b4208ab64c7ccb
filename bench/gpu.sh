#!/usr/bin/env bash
# GPU throughput benchmark (bench/gpu.py) for one H100/H200, within a time budget that counts
# from this script's start (set-up included; default 330 s, --budget-s to change).
# The GPU machine has torch but not diffusers/open_clip/pydantic (nor torchao): they come as
# wheels in .whl/ (made beforehand: bench/README.md, "To run on a device"), installed to
# /tmp/site. winnow itself runs from this working tree: its folders are linked under
# /tmp/site/winnow as pyproject.toml maps them, with a dist-info for its version.
# Writes gpu-<chip>.json to $OUT when set (a folder copied back from the GPU machine), else to
# bench/results/. Extra arguments go to bench/gpu.py (e.g. --items eager,compile-max-autotune).
set -euo pipefail
started=$(date +%s.%N)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# Inductor's FX graph cache, kept across processes: a second run on the same machine reuses
# the first one's compiled graphs (and max-autotune's choices).
export TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/winnow-inductor}
site=/tmp/site
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --ignore-requires-python --target "$site" .whl/*.whl
fi
python3 - "$site" <<'EOF'
import pathlib, shutil, sys, tomllib
site, project = pathlib.Path(sys.argv[1]), tomllib.loads(pathlib.Path("pyproject.toml").read_text())


def link(path: pathlib.Path, target: pathlib.Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    path.symlink_to(target.resolve())


top = site / "winnow"
if top.is_symlink():
    top.unlink()
top.mkdir(parents=True, exist_ok=True)
for package, folder in project["tool"]["setuptools"]["package-dir"].items():
    if package == "winnow":  # a real folder holding the top package's files and the links
        for module in pathlib.Path(folder).glob("*.py"):
            link(top / module.name, module)
    else:
        link(site.joinpath(*package.split(".")), pathlib.Path(folder))
version = project["project"]["version"]
info = site / f"winnow-{version}.dist-info"
info.mkdir(exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: winnow\nVersion: {version}\n")
EOF
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import diffusers, open_clip, pydantic, winnow.models.generator"
smi() { nvidia-smi --query-gpu="$1" --format=csv 2>/dev/null || echo "no nvidia-smi"; }
smi name,memory.total,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu
chip=$(python3 -c "import torch
n = torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'
print('h200' if 'H200' in n else 'h100' if 'H100' in n else 'gpu' if n != 'cpu' else 'cpu')")
status=0
python3 -m bench.gpu --out "${OUT:-bench/results}/gpu-$chip.json" --started-at "$started" "$@" || status=$?
smi clocks.sm,power.draw,temperature.gpu,memory.used
exit $status
