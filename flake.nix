{
  description = "p2p: hybrid peer-to-peer file sharing (tracker with dashboard, peers)";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    crane.url = "github:ipetkov/crane";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, crane, rust-overlay }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      perSystem = lib.genAttrs systems (system: import ./nix {
        inherit self crane;
        pkgs = import nixpkgs {
          inherit system;
          overlays = [ rust-overlay.overlays.default ];
        };
      });
      output = name: lib.mapAttrs (_: outputs: outputs.${name}) perSystem;
      # The modules take their default package from this flake, for the host's system.
      withPackage = module: service: package: { pkgs, ... }: {
        imports = [ module ];
        services.${service}.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.${package};
      };
    in
    {
      packages = output "packages";
      apps = output "apps";
      checks = output "checks";
      devShells = output "devShells";

      overlays.default = final: _prev: {
        p2p-tracker = self.packages.${final.stdenv.hostPlatform.system}.tracker;
        p2p-peer = self.packages.${final.stdenv.hostPlatform.system}.peer;
      };

      nixosModules = {
        p2p-tracker = withPackage ./nixos-modules/tracker.nix "p2p-tracker" "tracker";
        p2p-peer = withPackage ./nixos-modules/peer.nix "p2p-peer" "peer";
        default = {
          imports = [ self.nixosModules.p2p-tracker self.nixosModules.p2p-peer ];
        };
      };

      # Evaluated with nixpkgs' lib alone: `[ ]` means every module test passed.
      lib.moduleTests = (import ./nix/module-tests.nix { inherit lib; }).failures;
      # The images' tag, <version>-<git revision>: `nix eval --raw .#lib.imageTag`.
      lib.imageTag = import ./nix/image-tag.nix { inherit self; };
    };
}
