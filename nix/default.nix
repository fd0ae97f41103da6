# Everything the flake exposes for one system.
{ pkgs, crane, self }:
let
  inherit (pkgs) lib;
  build = import ./packages.nix { inherit pkgs crane; };
  images = import ./images.nix { inherit pkgs self; inherit (build) tracker peer; };
  app = package: program: {
    type = "app";
    program = "${package}/bin/${program}";
  };
  moduleTests = import ./module-tests.nix { inherit lib; };
in
{
  packages = {
    inherit (build) tracker peer web;
    default = build.tracker;
    tracker-image = images.tracker;
    peer-image = images.peer;
  };

  apps = {
    tracker = app build.tracker "p2p-tracker";
    peer = app build.peer "p2p-peer";
    download = app build.peer "p2p-download";
    default = app build.tracker "p2p-tracker";
  };

  checks = build.checks // {
    module-tests =
      if moduleTests.failures == [ ]
      then pkgs.runCommand "p2p-module-tests" { } "echo ${toString moduleTests.count} module tests passed > $out"
      else throw "NixOS module tests failed: ${builtins.toJSON moduleTests.failures}";
    vm-transfer = import ./vm-test.nix { inherit pkgs self; };
  };

  devShells.default = build.craneLib.devShell {
    checks = build.checks;
    packages = [
      build.wasmBindgenCli
      pkgs.binaryen
      pkgs.cargo-nextest
      pkgs.sqlx-cli
      pkgs.postgresql
      pkgs.chromium
      pkgs.nodejs
      pkgs.nixpkgs-fmt
      pkgs.deadnix
      pkgs.kubectl
      pkgs.yamllint
    ];
    CHROMIUM = lib.getExe pkgs.chromium;
  };
}
