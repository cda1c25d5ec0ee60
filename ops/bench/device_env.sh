# Makes `import kakeya` work from a checkout where the package is not installed (the GPU machine),
# then checks the server's imports. Source it from the repository root:
#
#     source ops/bench/device_env.sh            # or: source ops/bench/device_env.sh /tmp/pkg
#     python ops/bench/suite.py --device cuda --out ops/bench/results/NAME
#
# pyproject maps `kakeya` onto sdk/ and its subpackages onto runtime/, actors/ and proto/, so no
# single folder is the package: PKG/kakeya is built as a folder of symlinks to every file of sdk/
# plus runtime, actors and proto. The suite starts the server with `python -m kakeya.runtime.server.cli`,
# which inherits PYTHONPATH. Modules missing on the machine are installed from wheels carried in
# .whl/ (e.g. structlog-*.whl), offline and without dependencies.
# Sourced, so no `set -e`: a failure must not close the caller's shell.

_kakeya_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
_kakeya_pkg="${1:-/tmp/pkg}"
_kakeya_python="${PYTHON:-python3}"

rm -rf "$_kakeya_pkg/kakeya"
mkdir -p "$_kakeya_pkg/kakeya"
for _kakeya_file in "$_kakeya_root"/sdk/*; do
    ln -s "$_kakeya_file" "$_kakeya_pkg/kakeya/$(basename "$_kakeya_file")"
done
for _kakeya_sub in runtime actors proto; do
    ln -s "$_kakeya_root/$_kakeya_sub" "$_kakeya_pkg/kakeya/$_kakeya_sub"
done
export PYTHONPATH="$_kakeya_pkg${PYTHONPATH:+:$PYTHONPATH}"

# module:wheel-file prefix, for what the server imports beyond torch and transformers.
for _kakeya_pair in structlog:structlog grpc_health:grpcio_health_checking grpc_reflection:grpcio_reflection \
                    prometheus_client:prometheus_client anyio:anyio; do
    _kakeya_module="${_kakeya_pair%%:*}"
    _kakeya_wheel_prefix="${_kakeya_pair##*:}"
    if ! "$_kakeya_python" -c "import $_kakeya_module" 2>/dev/null; then
        _kakeya_wheels=("$_kakeya_root"/.whl/"$_kakeya_wheel_prefix"-*.whl)
        if [ -e "${_kakeya_wheels[0]}" ]; then
            "$_kakeya_python" -m pip install --quiet --no-index --no-deps "${_kakeya_wheels[@]}"
        else
            echo "device_env: $_kakeya_module is missing and .whl/ holds no $_kakeya_wheel_prefix-*.whl" >&2
        fi
    fi
done

"$_kakeya_python" - <<'EOF'
import importlib
missing = []
for name in ("torch", "transformers", "grpc", "google.protobuf", "structlog", "grpc_health.v1.health",
             "grpc_reflection.v1alpha.reflection", "prometheus_client", "anyio", "kakeya", "kakeya.runtime.server.cli"):
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
if "kakeya" not in " ".join(missing):
    import kakeya
    print("device_env: kakeya from", kakeya.__file__.rsplit("/", 1)[0])
print("device_env: missing:", "; ".join(missing) if missing else "nothing")
EOF
unset _kakeya_root _kakeya_pkg _kakeya_python _kakeya_file _kakeya_sub _kakeya_pair _kakeya_module \
      _kakeya_wheel_prefix _kakeya_wheels
