# services.p2p-tracker: the tracker with its dashboard, on embedded SQLite (in its state
# directory) or PostgreSQL (a URL, a URL in a secret file, or a local server provisioned here).
{ config, lib, pkgs, ... }:
let
  cfg = config.services.p2p-tracker;
  inherit (lib) mkOption mkEnableOption types;
  stateDir = "/var/lib/p2p-tracker";
  hostPort = host: port: if lib.hasInfix ":" host then "[${host}]:${toString port}" else "${host}:${toString port}";
  localDatabaseUrl = "postgresql:///p2p-tracker?host=/run/postgresql&user=p2p-tracker";
  databaseUrl = if cfg.database.createLocally then localDatabaseUrl else cfg.database.url;
  databaseArgs = lib.optionals (databaseUrl != null) [ "--postgres-url" databaseUrl ];
  args = [ "--addr" (hostPort cfg.listenAddress cfg.port) "--data-dir" stateDir "--rate-limit-rps" (toString cfg.rateLimit.rps) ]
    ++ lib.optionals (cfg.rateLimit.burst != null) [ "--rate-limit-burst" (toString cfg.rateLimit.burst) ]
    ++ lib.optional cfg.trustProxy "--trust-proxy"
    ++ databaseArgs
    ++ lib.optionals (cfg.metrics.port != null) [ "--metrics-addr" (hostPort cfg.metrics.listenAddress cfg.metrics.port) ]
    ++ cfg.extraArgs;
  loopback = address: lib.hasPrefix "127." address || address == "::1";
  # openFirewall opens the metrics port too, unless it listens on loopback only.
  publicMetricsPort = lib.optional (cfg.metrics.port != null && !loopback cfg.metrics.listenAddress) cfg.metrics.port;
  # Before every start: create the admin user, or set its password to the file's (so changing
  # the file and restarting changes the password). `user add` reads P2P_USER_PASSWORD.
  adminArgs = [ "--data-dir" stateDir ] ++ databaseArgs ++ [ "user" "add" cfg.admin.user ];
  service = (import ./service.nix { inherit lib pkgs; }).mkService {
    name = "p2p-tracker";
    description = "p2p tracker";
    executable = lib.getExe cfg.package;
    inherit args;
    stateDirectory = "p2p-tracker";
    inherit (cfg) port;
    secrets = [
      { name = "api-keys"; file = cfg.apiKeysFile; env = "API_KEYS"; option = "services.p2p-tracker.apiKeysFile"; }
      { name = "jwt-secret"; file = cfg.jwtSecretFile; env = "JWT_SECRET"; option = "services.p2p-tracker.jwtSecretFile"; }
      { name = "database-url"; file = cfg.database.urlFile; env = "POSTGRES_URL"; option = "services.p2p-tracker.database.urlFile"; }
      { name = "admin-password"; file = cfg.admin.passwordFile; env = "P2P_USER_PASSWORD"; option = "services.p2p-tracker.admin.passwordFile"; }
    ];
    preStartArgs = if cfg.admin.user != null then adminArgs else null;
    # postgresql.target is reached once the ensure* setup is done (nixpkgs 25.11 and later).
    after = lib.optionals cfg.database.createLocally [ "postgresql.service" "postgresql.target" ];
    requires = lib.optional cfg.database.createLocally "postgresql.service";
  };
in
{
  options.services.p2p-tracker = {
    enable = mkEnableOption "the p2p tracker (REST API, /ws events, dashboard at /dashboard/)";
    package = lib.mkPackageOption pkgs "p2p-tracker" { };

    listenAddress = mkOption {
      type = types.str;
      default = "0.0.0.0";
      example = "127.0.0.1";
      description = "Address to listen on (IPv4 or IPv6, without brackets).";
    };
    port = mkOption {
      type = types.port;
      default = 8080;
      description = "TCP port of the HTTP API, /ws and the dashboard; the same UDP port is the hole-punch rendezvous.";
    };
    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open every port the tracker listens on: {option}`port` (TCP, and UDP for the hole-punch
        rendezvous), and {option}`metrics.port` unless it listens on a loopback address.
      '';
    };

    metrics = {
      port = mkOption {
        type = types.nullOr types.port;
        default = null;
        example = 9090;
        description = ''
          Serve `/metrics` on this port only (`--metrics-addr`), no longer on {option}`port`: a
          reverse proxy in front of {option}`port` then cannot publish it. Unset: `/metrics` is
          on {option}`port`.
        '';
      };
      listenAddress = mkOption {
        type = types.str;
        default = "127.0.0.1";
        example = "0.0.0.0";
        description = "Address of {option}`metrics.port` (the default: this host's Prometheus only).";
      };
    };

    database = {
      url = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "postgresql:///p2p?host=/run/postgresql";
        description = ''
          PostgreSQL URL without a password (it is visible in the unit and the process list);
          use {option}`database.urlFile` for one with a password. When no URL is given the
          tracker uses an embedded SQLite database in ${stateDir}.
        '';
      };
      urlFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/secrets/p2p-tracker-database-url";
        description = "File holding the PostgreSQL URL (with its password); outside the Nix store.";
      };
      createLocally = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Provision a local PostgreSQL (services.postgresql) with a database and role
          `p2p-tracker`, reached over its Unix socket with peer authentication.
        '';
      };
    };

    admin = {
      user = mkOption {
        type = types.nullOr (types.strMatching "[^[:cntrl:]]{1,64}");
        default = null;
        example = "admin";
        description = ''
          A dashboard user with the admin role, created before the tracker starts (with
          `p2p-tracker user add`). Its password is {option}`admin.passwordFile`'s, set again at
          every start, so changing the file and restarting the service changes it.
        '';
      };
      passwordFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/secrets/p2p-admin-password";
        description = "File with the password of {option}`admin.user` (at least 8 characters); outside the Nix store.";
      };
    };

    apiKeysFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/p2p-api-keys";
      description = "File with API keys accepted besides database keys, one per line (or comma-separated).";
    };
    jwtSecretFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "File with the HS256 secret for JWTs. Unset: one is generated once and kept in the database.";
    };

    rateLimit = {
      rps = mkOption {
        type = types.ints.unsigned;
        default = 100;
        description = "Requests per second per client IP; 0 turns rate limiting off.";
      };
      burst = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "Burst allowance per client IP (default: twice the rate).";
      };
    };
    trustProxy = mkOption {
      type = types.bool;
      default = false;
      description = "Take the client IP from X-Forwarded-For (only behind a trusted reverse proxy).";
    };
    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--heartbeat-interval-secs" "15" ];
      description = "More arguments for p2p-tracker (see `p2p-tracker --help`).";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = service.assertions ++ [
      {
        assertion = lib.length (lib.filter (x: x) [ (cfg.database.url != null) (cfg.database.urlFile != null) cfg.database.createLocally ]) <= 1;
        message = "services.p2p-tracker.database: set at most one of url, urlFile and createLocally.";
      }
      {
        assertion = (cfg.admin.user == null) == (cfg.admin.passwordFile == null);
        message = "services.p2p-tracker.admin: set both user and passwordFile, or neither.";
      }
    ];
    warnings = lib.optional (cfg.apiKeysFile == null) ''
      services.p2p-tracker.apiKeysFile is not set: peers can register only with API keys created
      by `p2p-tracker key create` on the tracker's database. Give a file of keys to configure
      them declaratively.
    '';

    services.postgresql = lib.mkIf cfg.database.createLocally {
      enable = true;
      ensureDatabases = [ "p2p-tracker" ];
      ensureUsers = [{ name = "p2p-tracker"; ensureDBOwnership = true; }];
    };

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall ([ cfg.port ] ++ publicMetricsPort);
    networking.firewall.allowedUDPPorts = lib.mkIf cfg.openFirewall [ cfg.port ];

    systemd.services.p2p-tracker = service.unit;
  };
}
