# Tests of the NixOS modules that need nothing but nixpkgs' lib: each evaluates the modules with
# lib.evalModules next to a stub of the few NixOS options they set and a fake `pkgs`, then
# checks the generated unit, or that a bad value is rejected.
#   nix-instantiate --eval --strict --json -E \
#     'import ./nix/module-tests.nix { lib = import <nixpkgs-lib>/lib; }'
# `failures = [ ]` means every test passed.
{ lib }:
let
  fakePackage = name: program: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = program;
  };
  pkgs = {
    p2p-tracker = fakePackage "p2p-tracker-0.1.0" "p2p-tracker";
    p2p-peer = fakePackage "p2p-peer-0.1.0" "p2p-peer";
    writeShellScript = name: text: fakePackage name name // { inherit text; };
  };
  tracker = pkgs.p2p-tracker.outPath;
  peer = pkgs.p2p-peer.outPath;

  # The NixOS options the modules set, loosely typed.
  nixosStub = {
    options = {
      assertions = lib.mkOption { type = lib.types.listOf lib.types.anything; default = [ ]; };
      warnings = lib.mkOption { type = lib.types.listOf lib.types.str; default = [ ]; };
      systemd.services = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      networking.firewall.allowedTCPPorts = lib.mkOption { type = lib.types.listOf lib.types.port; default = [ ]; };
      networking.firewall.allowedUDPPorts = lib.mkOption { type = lib.types.listOf lib.types.port; default = [ ]; };
      services.postgresql = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
    };
  };
  eval = module: (lib.evalModules {
    modules = [ nixosStub ../nixos-modules module ];
    specialArgs = { inherit pkgs; };
  }).config;
  unit = name: module: (eval module).systemd.services.${name};
  serviceConfig = name: module: (unit name module).serviceConfig;
  trackerUnit = settings: serviceConfig "p2p-tracker" { services.p2p-tracker = { enable = true; } // settings; };
  peerUnit = settings: serviceConfig "p2p-peer" { services.p2p-peer = { enable = true; tracker = "http://tracker:8080"; } // settings; };
  warnings = module: (eval module).warnings;
  firewall = module: { inherit ((eval module).networking.firewall) allowedTCPPorts allowedUDPPorts; };
  failedAssertions = module: map (a: a.message) (lib.filter (a: !a.assertion) (eval module).assertions);
  rejected = module: !(builtins.tryEval (builtins.deepSeq (eval module).systemd.services true)).success;

  hardening = {
    DynamicUser = true;
    ProtectSystem = "strict";
    NoNewPrivileges = true;
    PrivateTmp = true;
    RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
    SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
    CapabilityBoundingSet = "";
  };
  hardeningOf = cfg: lib.getAttrs (lib.attrNames hardening) cfg;

  tests = {
    testTrackerDefaults = {
      expr = lib.getAttrs [ "ExecStart" "StateDirectory" "WorkingDirectory" "LoadCredential" ] (trackerUnit { });
      expected = {
        ExecStart = "${tracker}/bin/p2p-tracker --addr 0.0.0.0:8080 --data-dir /var/lib/p2p-tracker --rate-limit-rps 100";
        StateDirectory = "p2p-tracker";
        WorkingDirectory = "/var/lib/p2p-tracker";
        LoadCredential = [ ];
      };
    };
    testTrackerHardening = { expr = hardeningOf (trackerUnit { }); expected = hardening; };
    testPeerHardening = { expr = hardeningOf (peerUnit { }); expected = hardening; };

    testTrackerOptions = {
      expr = (trackerUnit {
        listenAddress = "::";
        port = 9000;
        rateLimit = { rps = 0; burst = 50; };
        trustProxy = true;
        database.url = "postgresql://db.internal/p2p";
        extraArgs = [ "--heartbeat-interval-secs" "15" ];
      }).ExecStart;
      expected = "${tracker}/bin/p2p-tracker --addr '[::]:9000' --data-dir /var/lib/p2p-tracker --rate-limit-rps 0"
        + " --rate-limit-burst 50 --trust-proxy --postgres-url postgresql://db.internal/p2p --heartbeat-interval-secs 15";
    };

    testTrackerSecretsByCredential =
      let cfg = trackerUnit { apiKeysFile = "/run/secrets/keys"; jwtSecretFile = "/run/secrets/jwt"; database.urlFile = "/run/secrets/db"; };
      in {
        expr = {
          inherit (cfg) LoadCredential;
          launcher = lib.hasPrefix "/nix/store/00000000000000000000000000000000-p2p-tracker-launcher " cfg.ExecStart;
        };
        expected = {
          LoadCredential = [ "api-keys:/run/secrets/keys" "jwt-secret:/run/secrets/jwt" "database-url:/run/secrets/db" ];
          launcher = true;
        };
      };
    testLauncherExportsCredentials = {
      expr =
        let
          text = (import ../nixos-modules/service.nix { inherit lib pkgs; }).mkCredentials {
            service = "s";
            executable = "/bin/x";
            secrets = [{ name = "api-keys"; file = "/run/k"; env = "API_KEYS"; option = "o"; }];
          };
        in
        map (needle: lib.hasInfix needle text.launcher.text) [
          ''value=$(< "$CREDENTIALS_DIRECTORY/api-keys")''
          ''export API_KEYS="''${value//$'\n'/,}"''
          ''exec /bin/x "$@"''
        ];
      expected = [ true true true ];
    };
    testSecretInStoreIsRefused = {
      expr = failedAssertions { services.p2p-tracker = { enable = true; jwtSecretFile = "/nix/store/aaaa-jwt"; }; };
      expected = [ "services.p2p-tracker.jwtSecretFile points into the Nix store (/nix/store/aaaa-jwt), where every user can read it; give a path outside it." ];
    };
    testPeerSecretInStoreIsRefused = {
      expr = lib.length (failedAssertions { services.p2p-peer = { enable = true; tracker = "http://t"; apiKeyFile = "/nix/store/aaaa-key"; }; });
      expected = 1;
    };

    testLocalPostgres =
      let config = eval { services.p2p-tracker = { enable = true; database.createLocally = true; }; };
      in {
        expr = {
          inherit (config.services.postgresql) enable ensureDatabases;
          inherit (config.systemd.services.p2p-tracker) requires;
          url = lib.hasSuffix "--postgres-url 'postgresql:///p2p-tracker?host=/run/postgresql&user=p2p-tracker'"
            config.systemd.services.p2p-tracker.serviceConfig.ExecStart;
        };
        expected = { enable = true; ensureDatabases = [ "p2p-tracker" ]; requires = [ "postgresql.service" ]; url = true; };
      };
    testOneDatabaseSource = {
      expr = failedAssertions { services.p2p-tracker = { enable = true; database = { createLocally = true; url = "postgresql://x/y"; }; }; };
      expected = [ "services.p2p-tracker.database: set at most one of url, urlFile and createLocally." ];
    };

    testPeerOptions = {
      expr = (peerUnit {
        port = 7000;
        dataDir = "/var/lib/p2p/peer";
        apiKeyFile = "/run/secrets/key";
        uploadLimit = "10M";
        downloadLimit = "512K";
        relayOnly = true;
        announceAddresses = [ "203.0.113.7" "2001:db8::7" ];
      }) // { ExecStart = null; };
      expected = (peerUnit { }) // {
        ExecStart = null;
        StateDirectory = "p2p/peer";
        WorkingDirectory = "/var/lib/p2p/peer";
        LoadCredential = [ "api-key:/run/secrets/key" ];
      };
    };
    testPeerExecStart = {
      expr = (peerUnit { port = 7000; uploadLimit = "10M"; relayOnly = true; announceAddresses = [ "203.0.113.7" "2001:db8::7" ]; }).ExecStart;
      expected = "${peer}/bin/p2p-peer --daemon --tracker http://tracker:8080 --listen 0.0.0.0 --port 7000 --data /var/lib/p2p-peer"
        + " --upload-limit 10M --announce-addr 203.0.113.7,2001:db8::7 --relay-only --dht-port 6881";
    };
    testPeerPublic = {
      expr = (peerUnit { public = true; }).ExecStart;
      expected = "${peer}/bin/p2p-peer --daemon --tracker http://tracker:8080 --listen 0.0.0.0 --port 6881 --data /var/lib/p2p-peer --public --dht-port 6881";
    };
    testPeerShareDir = {
      expr = lib.getAttrs [ "ExecStart" "BindReadOnlyPaths" ] (peerUnit { shareDir = "/srv/public"; });
      expected = {
        ExecStart = "${peer}/bin/p2p-peer --daemon --tracker http://tracker:8080 --listen 0.0.0.0 --port 6881 --data /var/lib/p2p-peer --share-dir /srv/public --dht-port 6881";
        BindReadOnlyPaths = [ "/srv/public" ];
      };
    };
    testFirewall = {
      expr = map (m: (eval m).networking.firewall.allowedTCPPorts) [
        { services.p2p-peer = { enable = true; tracker = "http://t"; openFirewall = true; }; }
        { services.p2p-tracker = { enable = true; openFirewall = true; port = 8443; }; }
        { services.p2p-tracker.enable = true; }
      ];
      expected = [ [ 6881 ] [ 8443 ] [ ] ];
    };
    testTrackerFirewallOpensTheRendezvous = {
      expr = (eval { services.p2p-tracker = { enable = true; openFirewall = true; }; }).networking.firewall.allowedUDPPorts;
      expected = [ 8080 ];
    };
    # `enable = true;` alone: a unit that talks to a tracker on this machine, as the CLI would.
    testPeerEnableAlone =
      let config = eval { services.p2p-peer.enable = true; };
      in {
        expr = {
          execStart = config.systemd.services.p2p-peer.serviceConfig.ExecStart;
          warnings = map (lib.hasPrefix "services.p2p-peer.apiKeyFile is not set") config.warnings;
        };
        expected = {
          execStart = "${peer}/bin/p2p-peer --daemon --tracker http://localhost:8080 --listen 0.0.0.0 --port 6881 --data /var/lib/p2p-peer --dht-port 6881";
          warnings = [ true ];
        };
      };
    testPeerDht = {
      expr = map (dht: lib.last (lib.splitString " --data /var/lib/p2p-peer " (peerUnit { inherit dht; }).ExecStart)) [
        { port = 7001; bootstrap = [ "dht.example.org:6881" "203.0.113.9:6881" ]; }
        { enable = false; }
      ];
      expected = [ "--dht-port 7001 --dht-bootstrap dht.example.org:6881,203.0.113.9:6881" "--dht off" ];
    };
    testPeerFirewallCoversEveryPort = {
      expr = map (peer: firewall { services.p2p-peer = { enable = true; openFirewall = true; } // peer; }) [
        { }
        { port = 7000; dht.port = 7001; }
        { dht.enable = false; }
      ];
      expected = [
        { allowedTCPPorts = [ 6881 ]; allowedUDPPorts = [ 6881 ]; }
        { allowedTCPPorts = [ 7000 ]; allowedUDPPorts = [ 7001 ]; }
        { allowedTCPPorts = [ 6881 ]; allowedUDPPorts = [ ]; }
      ];
    };
    testMissingApiKeysWarn = {
      expr = map (m: lib.length (warnings m)) [
        { services.p2p-tracker.enable = true; }
        { services.p2p-tracker = { enable = true; apiKeysFile = "/run/secrets/keys"; }; }
        { services.p2p-peer = { enable = true; apiKeyFile = "/run/secrets/key"; }; }
        { }
      ];
      expected = [ 1 0 0 0 ];
    };
    testTrackerMissingApiKeysWarning = {
      expr = lib.hasPrefix "services.p2p-tracker.apiKeysFile is not set" (lib.head (warnings { services.p2p-tracker.enable = true; }));
      expected = true;
    };

    # The admin user is (re)written before every start from its password file.
    testTrackerAdmin =
      let cfg = trackerUnit { admin = { user = "root admin"; passwordFile = "/run/secrets/admin"; }; database.url = "postgresql://db/p2p"; };
      in {
        expr = {
          inherit (cfg) LoadCredential;
          preStart = lib.last (lib.splitString "-p2p-tracker-launcher " cfg.ExecStartPre);
          sameLauncher = lib.head (lib.splitString " " cfg.ExecStartPre) == lib.head (lib.splitString " " cfg.ExecStart);
        };
        expected = {
          LoadCredential = [ "admin-password:/run/secrets/admin" ];
          preStart = "--data-dir /var/lib/p2p-tracker --postgres-url postgresql://db/p2p user add 'root admin'";
          sameLauncher = true;
        };
      };
    testTrackerAdminPasswordReachesUserAdd = {
      expr =
        let
          text = (import ../nixos-modules/service.nix { inherit lib pkgs; }).mkCredentials {
            service = "p2p-tracker";
            executable = "/bin/x";
            secrets = [{ name = "admin-password"; file = "/run/p"; env = "P2P_USER_PASSWORD"; option = "o"; }];
          };
        in
        lib.hasInfix ''export P2P_USER_PASSWORD='' text.launcher.text;
      expected = true;
    };
    testNoAdminNoPreStart = {
      expr = (trackerUnit { }) ? ExecStartPre;
      expected = false;
    };
    testAdminNeedsUserAndPassword = {
      expr = map failedAssertions [
        { services.p2p-tracker = { enable = true; admin.user = "admin"; }; }
        { services.p2p-tracker = { enable = true; admin.passwordFile = "/run/p"; }; }
        { services.p2p-tracker = { enable = true; admin = { user = "admin"; passwordFile = "/nix/store/aaaa-pw"; }; }; }
      ];
      expected = [
        [ "services.p2p-tracker.admin: set both user and passwordFile, or neither." ]
        [ "services.p2p-tracker.admin: set both user and passwordFile, or neither." ]
        [ "services.p2p-tracker.admin.passwordFile points into the Nix store (/nix/store/aaaa-pw), where every user can read it; give a path outside it." ]
      ];
    };
    # Not a module, but evaluated the same way: each commit's images get their own tag.
    testImageTag =
      let
        version = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).workspace.package.version;
        tag = self: import ./image-tag.nix { inherit self; };
      in
      {
        expr = map tag [{ shortRev = "3f2a9c1"; rev = "3f2a9c1ffff"; } { dirtyShortRev = "3f2a9c1-dirty"; } { }];
        expected = [ "${version}-3f2a9c1" "${version}-3f2a9c1-dirty" "${version}-dirty" ];
      };
    testTrackerMetricsPort = {
      expr = map
        (metrics: {
          execStart = lib.last (lib.splitString " --rate-limit-rps 100 " (trackerUnit { inherit metrics; }).ExecStart);
          inherit (firewall { services.p2p-tracker = { enable = true; openFirewall = true; inherit metrics; }; }) allowedTCPPorts;
        }) [
        { port = 9090; }
        { port = 9090; listenAddress = "0.0.0.0"; }
      ];
      expected = [
        { execStart = "--metrics-addr 127.0.0.1:9090"; allowedTCPPorts = [ 8080 ]; }
        { execStart = "--metrics-addr 0.0.0.0:9090"; allowedTCPPorts = [ 8080 9090 ]; }
      ];
    };
    testPrivilegedPort = {
      expr = lib.getAttrs [ "AmbientCapabilities" "PrivateUsers" ] (trackerUnit { port = 80; });
      expected = { AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ]; PrivateUsers = false; };
    };
    testDisabledMeansNoUnit = {
      expr = (eval { }).systemd.services;
      expected = { };
    };

    testRejectsBadValues = {
      expr = map rejected [
        { services.p2p-tracker = { enable = true; port = "abc"; }; }
        { services.p2p-tracker = { enable = true; port = 70000; }; }
        { services.p2p-tracker = { enable = true; rateLimit.rps = -1; }; }
        { services.p2p-tracker = { enable = true; rateLimit.burst = 0; }; }
        { services.p2p-tracker = { enable = true; databse.url = "postgresql://x/y"; }; }
        { services.p2p-peer = { enable = true; tracker = "tracker:8080"; }; }
        { services.p2p-peer = { enable = true; tracker = "http://t"; uploadLimit = "fast"; }; }
        { services.p2p-peer = { enable = true; tracker = "http://t"; dataDir = "/srv/p2p"; }; }
        { services.p2p-peer = { enable = true; dht.port = 65536; }; }
        { services.p2p-peer = { enable = true; dht.bootstrap = [ "router.example.org" ]; }; }
        { services.p2p-peer = { enable = true; dht = true; }; }
        { services.p2p-tracker = { enable = true; admin.user = "bad\nname"; admin.passwordFile = "/run/p"; }; }
      ];
      expected = lib.genList (_: true) 12;
    };
    testAcceptsGoodValues = {
      expr = rejected { services.p2p-peer = { enable = true; tracker = "https://t.example"; uploadLimit = "1G"; }; };
      expected = false;
    };
  };
in
{
  failures = lib.runTests tests;
  count = lib.length (lib.attrNames tests);
}
