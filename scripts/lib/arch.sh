# Sourced by the build scripts: `parse_arch NAME "$@"` sets `arch` (x86_64 or aarch64) from an
# optional `--target x86_64|amd64|aarch64|arm64`, and exits 2 with NAME's usage otherwise.
parse_arch() {
  local name=$1
  shift
  arch=x86_64
  case "${1:-}" in
    "") ;;
    --target)
      case "${2:-}" in
        x86_64 | amd64) arch=x86_64 ;;
        aarch64 | arm64) arch=aarch64 ;;
        *) echo "$name: unknown target '${2:-}' (x86_64 or aarch64)" >&2; exit 2 ;;
      esac ;;
    *) echo "usage: scripts/$name.sh [--target x86_64|aarch64]" >&2; exit 2 ;;
  esac
}
