# The crane builds: dependencies once (native and wasm32), then one derivation per binary, so
# Cargo features are never unified across packages; plus the clippy, fmt and nextest checks.
{ pkgs, crane }:
let
  inherit (pkgs) lib;
  wasmTarget = "wasm32-unknown-unknown";
  craneLib = (crane.mkLib pkgs).overrideToolchain (p: p.rust-bin.stable.latest.default.override {
    targets = [ wasmTarget ];
    extensions = [ "clippy" "rustfmt" "rust-src" ];
  });
  root = ../.;
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (craneLib.fileset.commonCargoSources root)
      ../backend/migrations # embedded by sqlx::migrate!
      ../web/index.html
      ../web/style.css
    ];
  };
  common = {
    inherit src;
    strictDeps = true;
    # The fuzz crate is its own workspace and needs a nightly toolchain; it is not built here.
    cargoExtraArgs = "--locked";
  };
  cargoArtifacts = craneLib.buildDepsOnly (common // { pname = "p2p-deps"; });
  binary = pname: cargoPackage: extra: craneLib.buildPackage (common // {
    inherit pname cargoArtifacts;
    cargoExtraArgs = "--locked -p ${cargoPackage}";
    doCheck = false; # the workspace tests run once, in checks.nextest
  } // extra);

  # wasm-bindgen-cli must be exactly the version of the wasm-bindgen crate in Cargo.lock. It is
  # built from its crates.io package, which ships its own Cargo.lock.
  wasmBindgenVersion = "0.2.130";
  lockedWasmBindgen = (lib.findFirst (p: p.name == "wasm-bindgen") { version = "none"; }
    (builtins.fromTOML (builtins.readFile ../Cargo.lock)).package).version;
  wasmBindgenCli =
    assert lib.assertMsg (lockedWasmBindgen == wasmBindgenVersion)
      "nix/packages.nix: Cargo.lock has wasm-bindgen ${lockedWasmBindgen}; update wasmBindgenVersion and its checksum";
    craneLib.buildPackage {
      pname = "wasm-bindgen-cli";
      version = wasmBindgenVersion;
      src = craneLib.downloadCargoPackage {
        name = "wasm-bindgen-cli";
        version = wasmBindgenVersion;
        checksum = "c37f6904387d19a319525c74af274c73912f3871c35555aa49f3ea64ebb2fc7a";
        source = "registry+https://github.com/rust-lang/crates.io-index";
      };
      cargoExtraArgs = "--locked --bin wasm-bindgen";
      nativeBuildInputs = [ pkgs.pkg-config ];
      buildInputs = [ pkgs.openssl ];
      doCheck = false;
    };

  # The dashboard, as scripts/build-web.sh makes it: index.html, style.css, pkg/*.js, pkg/*.wasm.
  webArgs = common // {
    pname = "p2p-web";
    cargoExtraArgs = "--locked -p p2p-web";
    CARGO_BUILD_TARGET = wasmTarget;
    CARGO_PROFILE = "wasm-release";
    doCheck = false;
  };
  web = craneLib.mkCargoDerivation (webArgs // {
    cargoArtifacts = craneLib.buildDepsOnly webArgs;
    nativeBuildInputs = [ wasmBindgenCli pkgs.binaryen ];
    buildPhaseCargoCommand = "cargo build --locked --profile wasm-release -p p2p-web --target ${wasmTarget}";
    installPhaseCommand = ''
      mkdir -p $out/pkg
      wasm-bindgen --target web --no-typescript --out-dir $out/pkg --out-name p2p_web \
        "''${CARGO_TARGET_DIR:-target}/${wasmTarget}/wasm-release/p2p_web.wasm"
      wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-reference-types \
        -o $out/pkg/p2p_web_bg.wasm $out/pkg/p2p_web_bg.wasm
      cp web/index.html web/style.css $out/
    '';
  });

  tracker = binary "p2p-tracker" "p2p-tracker" {
    # backend/build.rs embeds the dashboard from here, so /dashboard/ needs no configuration.
    P2P_WEB_DIST = web;
    meta.mainProgram = "p2p-tracker";
  };
  peer = binary "p2p-peer" "p2p-peer" {
    meta.mainProgram = "p2p-peer";
  };
in
{
  inherit craneLib wasmBindgenCli web tracker peer;
  checks = {
    inherit tracker peer web;
    clippy = craneLib.cargoClippy (common // {
      inherit cargoArtifacts;
      pname = "p2p-clippy";
      cargoClippyExtraArgs = "--workspace --all-targets -- -D warnings";
    });
    fmt = craneLib.cargoFmt { inherit src; pname = "p2p-fmt"; };
    nextest = craneLib.cargoNextest (common // {
      inherit cargoArtifacts;
      pname = "p2p-nextest";
      # PostgreSQL and browser tests print SKIPPED in the sandbox; scripts/test.sh runs them.
      cargoNextestExtraArgs = "--workspace --no-fail-fast";
    });
  };
}
