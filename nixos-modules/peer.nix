# services.p2p-peer: a peer daemon that shares every file placed directly in its share directory
# (its data directory unless shareDir is set), watching it for new ones, and serves chunks to
# other peers.
{ config, lib, pkgs, ... }:
let
  cfg = config.services.p2p-peer;
  inherit (lib) mkOption mkEnableOption types;
  rate = types.strMatching "[1-9][0-9]*[KkMmGg]?";
  args = [ "--daemon" "--tracker" cfg.tracker "--listen" cfg.listenAddress "--port" (toString cfg.port) "--data" cfg.dataDir ]
    ++ lib.optionals (cfg.shareDir != null) [ "--share-dir" cfg.shareDir ]
    ++ lib.optionals (cfg.uploadLimit != null) [ "--upload-limit" cfg.uploadLimit ]
    ++ lib.optionals (cfg.downloadLimit != null) [ "--download-limit" cfg.downloadLimit ]
    ++ lib.optionals (cfg.announceAddresses != [ ]) [ "--announce-addr" (lib.concatStringsSep "," cfg.announceAddresses) ]
    ++ lib.optional cfg.relayOnly "--relay-only"
    ++ lib.optional cfg.public "--public"
    ++ (if cfg.dht.enable
  then [ "--dht-port" (toString cfg.dht.port) ]
    ++ lib.optionals (cfg.dht.bootstrap != [ ]) [ "--dht-bootstrap" (lib.concatStringsSep "," cfg.dht.bootstrap) ]
  else [ "--dht" "off" ])
    ++ cfg.extraArgs;
  service = (import ./service.nix { inherit lib pkgs; }).mkService {
    name = "p2p-peer";
    description = "p2p peer";
    executable = lib.getExe' cfg.package "p2p-peer";
    inherit args;
    stateDirectory = lib.removePrefix "/var/lib/" cfg.dataDir;
    inherit (cfg) port;
    secrets = [
      { name = "api-key"; file = cfg.apiKeyFile; env = "P2P_API_KEY"; option = "services.p2p-peer.apiKeyFile"; }
    ];
  };
in
{
  options.services.p2p-peer = {
    enable = mkEnableOption "a p2p peer daemon";
    package = lib.mkPackageOption pkgs "p2p-peer" { };

    tracker = mkOption {
      type = types.strMatching "https?://.+";
      # The CLI's default, so `enable = true;` alone runs next to a local tracker.
      default = "http://localhost:8080";
      example = "https://tracker.example.org";
      description = "URL of the tracker (the default is the CLI's: a tracker on this machine).";
    };
    listenAddress = mkOption {
      type = types.str;
      default = "0.0.0.0";
      description = "Address the peer protocol listens on.";
    };
    port = mkOption {
      type = types.port;
      default = 6881;
      description = "TCP port of the peer protocol.";
    };
    announceAddresses = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "203.0.113.7" ];
      description = "Addresses to register at the tracker (default: the address the tracker sees).";
    };
    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open every port the peer listens on: {option}`port` (TCP) so other peers can fetch
        chunks, and {option}`dht.port` (UDP) when the DHT is on. Hole punching needs no open
        port (its UDP socket sends first, so the replies are part of a known flow).
      '';
    };

    public = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Share every file publicly: served to anyone who asks and announced on the DHT
        (`--public`). By default files are private: served only to peers the tracker admitted.
      '';
    };

    dht = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Announce and find files on the BitTorrent Mainline DHT too, besides the tracker (as
          the CLI does by default; `--dht off` when false).
        '';
      };
      port = mkOption {
        type = types.port;
        default = 6881;
        description = "UDP port of the DHT node.";
      };
      bootstrap = mkOption {
        type = types.listOf (types.strMatching ".+:[0-9]+");
        default = [ ];
        example = [ "dht.example.org:6881" ];
        description = "DHT nodes to join through, `host:port` (default: the public Mainline routers).";
      };
    };

    dataDir = mkOption {
      type = types.strMatching "/var/lib/[^/].*";
      default = "/var/lib/p2p-peer";
      description = ''
        The peer's data: its identity key, partial and finished downloads, and the files it shares.
        The daemon shares every file placed directly in it and watches it for new ones. It is the
        service's systemd StateDirectory (owned by its dynamic user), hence below /var/lib.
      '';
    };

    shareDir = mkOption {
      type = types.nullOr (types.strMatching "/.+");
      default = null;
      example = "/srv/media/public";
      description = ''
        A folder whose files the daemon shares (and watches for new ones) instead of
        {option}`dataDir`; downloads still go to {option}`dataDir`. It is bind-mounted read-only
        into the service's sandbox, so its files must be readable by every user (the service runs
        as a dynamic user).
      '';
    };

    apiKeyFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/p2p-api-key";
      description = "File with the API key for the tracker; outside the Nix store.";
    };
    uploadLimit = mkOption {
      type = types.nullOr rate;
      default = null;
      example = "10M";
      description = "Upload limit in bytes per second (K, M, G suffixes: powers of 1024); unlimited when null.";
    };
    downloadLimit = mkOption {
      type = types.nullOr rate;
      default = null;
      example = "50M";
      description = "Download limit in bytes per second; unlimited when null.";
    };
    relayOnly = mkOption {
      type = types.bool;
      default = false;
      description = "Reach and be reached by other peers only through the tracker's relay (`/relay`), e.g. behind a strict NAT.";
    };
    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--pipeline" "32" ];
      description = "More arguments for p2p-peer (see `p2p-peer --help`).";
    };
  };

  config = lib.mkIf cfg.enable {
    inherit (service) assertions;
    warnings = lib.optional (cfg.apiKeyFile == null) ''
      services.p2p-peer.apiKeyFile is not set: the tracker refuses to register a peer without an
      API key. Create one on the tracker (`p2p-tracker key create`, or a key listed in
      services.p2p-tracker.apiKeysFile) and give its file here.
    '';

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ cfg.port ];
    networking.firewall.allowedUDPPorts = lib.mkIf (cfg.openFirewall && cfg.dht.enable) [ cfg.dht.port ];

    systemd.services.p2p-peer = lib.mkMerge [
      service.unit
      (lib.mkIf (cfg.shareDir != null) { serviceConfig.BindReadOnlyPaths = [ cfg.shareDir ]; })
    ];
  };
}
