# OCI images (docker-archive tarballs), tagged <version>-<git revision> (./image-tag.nix):
# `docker load < result`, `kind load image-archive result`, or
# `skopeo copy docker-archive:result docker://REGISTRY/p2p-tracker:TAG` (docs/deployment.md).
# No shell and no package manager inside: the binary, CA certificates, an /etc/passwd entry for
# the unprivileged user, a writable state directory and /tmp.
{ pkgs, self, tracker, peer }:
let
  inherit (pkgs) lib;
  tag = import ./image-tag.nix { inherit self; };
  uid = "65532"; # the conventional "nonroot" id, also set as runAsUser in k8s/
  image = { name, package, stateDir, port, env, cmd ? [ ] }: pkgs.dockerTools.buildLayeredImage {
    inherit name tag;
    contents = [
      package
      pkgs.dockerTools.caCertificates
      (pkgs.writeTextDir "etc/passwd" "nonroot:x:${uid}:${uid}::${stateDir}:/noshell\n")
      (pkgs.writeTextDir "etc/group" "nonroot:x:${uid}:\n")
    ];
    fakeRootCommands = ''
      mkdir -p .${stateDir} tmp
      chown ${uid}:${uid} .${stateDir}
      chmod 0700 .${stateDir}
      chmod 1777 tmp
    '';
    enableFakechroot = false;
    config = {
      Entrypoint = [ (lib.getExe package) ];
      Cmd = cmd;
      User = "${uid}:${uid}";
      WorkingDir = stateDir;
      Env = env ++ [ "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt" ];
      # TCP: the API or the peer protocol; UDP: the tracker's hole-punch rendezvous or the peer's DHT.
      ExposedPorts."${toString port}/tcp" = { };
      ExposedPorts."${toString port}/udp" = { };
      Volumes.${stateDir} = { };
      Labels = {
        "org.opencontainers.image.title" = name;
        "org.opencontainers.image.version" = package.version;
        "org.opencontainers.image.revision" = self.rev or self.dirtyRev or "dirty";
        "org.opencontainers.image.licenses" = "MIT";
      };
    };
  };
in
{
  tracker = image {
    name = "p2p-tracker";
    package = tracker;
    stateDir = "/var/lib/p2p-tracker";
    port = 8080;
    env = [ "P2P_ADDR=:8080" "P2P_DATA_DIR=/var/lib/p2p-tracker" ];
  };
  # p2p-download is in the image too: `--entrypoint p2p-download`.
  peer = image {
    name = "p2p-peer";
    package = peer;
    stateDir = "/var/lib/p2p-peer";
    port = 6881;
    env = [ "P2P_DATA=/var/lib/p2p-peer" "P2P_PORT=6881" ];
    cmd = [ "--daemon" ];
  };
}
