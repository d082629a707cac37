# Sourced by the benchmark scripts, from the repository root, with THREADS set: the venv's
# python and libtorch, the thread counts, and `build_example NAME`, which builds a
# sspo-model example in release and sets BIN to it.
PY="${SSPO_PYTHON:-$PWD/.venv/bin/python}"
export VIRTUAL_ENV="${VIRTUAL_ENV:-$PWD/.venv}" PATH="$PWD/.venv/bin:$PATH" LIBTORCH_USE_PYTORCH=1
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
build_example() {
  cargo build --release -p sspo-model --example "$1" >&2
  BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/examples/$1"
}
