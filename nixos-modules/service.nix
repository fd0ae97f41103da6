# What the tracker and peer services share: the systemd unit, its sandbox, and secrets. Each
# secret file is handed over by systemd's LoadCredential (readable by the service's dynamic user
# only, never copied into the Nix store), and a small launcher exports it into the environment
# variable the binary reads, then execs the binary.
{ lib, pkgs }:
rec {
  # secrets: list of { name, file (null = unset), env, option }, where `option` is the option's
  # name for messages. Returns what a systemd service and `assertions` need.
  mkCredentials = { service, secrets, executable }:
    let
      given = lib.filter (s: s.file != null) secrets;
      exportLine = s:
        # Several lines (e.g. one API key per line) become a comma-separated list.
        ''
          value=$(< "$CREDENTIALS_DIRECTORY/${s.name}")
          export ${s.env}="''${value//$'\n'/,}"
        '';
    in
    {
      loadCredential = map (s: "${s.name}:${toString s.file}") given;
      launcher =
        if given == [ ]
        then executable
        else
          pkgs.writeShellScript "${service}-launcher" ''
            set -euo pipefail
            ${lib.concatMapStrings exportLine given}
            exec ${executable} "$@"
          '';
      assertions = map
        (s: {
          assertion = !lib.hasPrefix "${builtins.storeDir}/" (toString s.file);
          message = "${s.option} points into the Nix store (${toString s.file}), where every user can read it; give a path outside it.";
        })
        given;
    };

  # A unit running `executable args` as a dynamic user with its state in
  # /var/lib/<stateDirectory>, after `executable preStartArgs` when those are given (with the
  # same secrets). Returns the unit and the assertions on its secrets.
  mkService = { name, description, executable, args, secrets, stateDirectory, port, after ? [ ], requires ? [ ], preStartArgs ? null }:
    let
      credentials = mkCredentials { service = name; inherit executable secrets; };
    in
    {
      inherit (credentials) assertions;
      unit = {
        inherit description requires;
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ] ++ after;
        environment.RUST_LOG = lib.mkDefault "info";
        serviceConfig = hardening // {
          ExecStart = "${credentials.launcher} ${lib.escapeShellArgs args}";
          User = name;
          Group = name;
          StateDirectory = stateDirectory;
          StateDirectoryMode = "0700";
          WorkingDirectory = "/var/lib/${stateDirectory}";
          LoadCredential = credentials.loadCredential;
        } // lib.optionalAttrs (preStartArgs != null) {
          ExecStartPre = "${credentials.launcher} ${lib.escapeShellArgs preStartArgs}";
        } // lib.optionalAttrs (port < 1024) {
          AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ];
          CapabilityBoundingSet = [ "CAP_NET_BIND_SERVICE" ];
          PrivateUsers = false;
        };
      };
    };

  # The systemd sandbox both services share (as in attic's atticd module).
  hardening = {
    DynamicUser = true;
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    DevicePolicy = "closed";
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    NoNewPrivileges = true;
    PrivateDevices = true;
    PrivateTmp = true;
    PrivateUsers = true;
    ProcSubset = "pid";
    ProtectClock = true;
    ProtectControlGroups = true;
    ProtectHome = true;
    ProtectHostname = true;
    ProtectKernelLogs = true;
    ProtectKernelModules = true;
    ProtectKernelTunables = true;
    ProtectProc = "invisible";
    ProtectSystem = "strict";
    RemoveIPC = true;
    RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
    UMask = "0077";
    Restart = "on-failure";
    RestartSec = "5s";
  };
}
