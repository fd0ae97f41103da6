# Both services. Outside the flake, `package` defaults to pkgs.p2p-tracker / pkgs.p2p-peer
# (the flake's overlays.default provides them); the flake's nixosModules set it themselves.
{
  imports = [ ./tracker.nix ./peer.nix ];
}
