# Sourced by the device scripts (bench/gpu/*.sh): installs the wheels carried in
# .device-wheels (the GPU machine has none of our extra modules and no network) and puts
# redis-server, carried with its libraries, on the PATH. Sets OUT (default /tmp/out).
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
pip install -q --no-deps --target /tmp/pylib .device-wheels/*.whl > "$OUT/pip.txt" 2>&1
export PYTHONPATH=/tmp/pylib:$PWD PATH=$PWD/.device-wheels/redis:$PATH
export LD_LIBRARY_PATH=$PWD/.device-wheels/redis:${LD_LIBRARY_PATH:-}
