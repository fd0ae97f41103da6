# The tag of this build's images: <version>-<git revision>, e.g. 0.1.0-3f2a9c1, so each commit's
# images have their own tag and `imagePullPolicy: IfNotPresent` never keeps running an older
# one. A tree with uncommitted changes gives <version>-<revision>-dirty (Nix 2.16 and later) or
# <version>-dirty: never push those to a shared registry.
#   nix eval --raw .#lib.imageTag
{ self }:
let
  version = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).workspace.package.version;
in
"${version}-${self.shortRev or self.dirtyShortRev or "dirty"}"
