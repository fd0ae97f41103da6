# A tracker and two peers in VMs: `seeder` runs the peer daemon (services.p2p-peer) and shares a
# file dropped into its data directory; `leecher` fetches it with p2p-download, and the test
# compares SHA-256 sums. Run with `nix build .#checks.x86_64-linux.vm-transfer` (needs KVM).
{ pkgs, self }:
let
  apiKey = "vm-test-key";
  # A secret outside the Nix store, as the modules require (/etc entries are links, not copies).
  secret = name: text: { environment.etc."p2p/${name}" = { inherit text; mode = "0400"; }; };
in
pkgs.testers.runNixOSTest {
  name = "p2p-transfer";

  nodes = {
    tracker = { ... }: {
      imports = [ self.nixosModules.p2p-tracker (secret "api-keys" apiKey) ];
      services.p2p-tracker = {
        enable = true;
        openFirewall = true;
        apiKeysFile = "/etc/p2p/api-keys";
      };
    };
    seeder = { ... }: {
      imports = [ self.nixosModules.p2p-peer (secret "api-key" apiKey) ];
      services.p2p-peer = {
        enable = true;
        tracker = "http://tracker:8080";
        apiKeyFile = "/etc/p2p/api-key";
        openFirewall = true;
        dht.enable = false; # no Internet in the test; tests run peers with the DHT off
      };
    };
    leecher = { pkgs, ... }: {
      environment.systemPackages = [ self.packages.${pkgs.stdenv.hostPlatform.system}.peer ];
      networking.firewall.allowedTCPPorts = [ 6881 ];
    };
  };

  testScript = ''
    start_all()
    tracker.wait_for_unit("p2p-tracker.service")
    tracker.wait_for_open_port(8080)
    tracker.succeed("curl -sf http://localhost:8080/health")
    tracker.succeed("curl -sf http://localhost:8080/dashboard/ | grep -qi '<html'")

    seeder.wait_for_unit("p2p-peer.service")
    seeder.succeed("head -c 5000000 /dev/urandom > /tmp/blob.bin")
    file_id = seeder.succeed("sha256sum /tmp/blob.bin | cut -d' ' -f1").strip()
    # The daemon shares what appears in its data directory once the file has settled.
    seeder.succeed("install -m 0644 /tmp/blob.bin /var/lib/p2p-peer/blob.bin")
    tracker.wait_until_succeeds(
        f"curl -sf -H 'X-API-Key: ${apiKey}' http://localhost:8080/api/files/{file_id}",
        timeout=60,
    )

    leecher.wait_for_unit("multi-user.target")
    leecher.succeed(
        f"p2p-download --tracker http://tracker:8080 --dht off --api-key ${apiKey} --data /tmp/dl {file_id}",
        timeout=120,
    )
    got = leecher.succeed("sha256sum /tmp/dl/blob.bin | cut -d' ' -f1").strip()
    assert got == file_id, f"downloaded {got}, expected {file_id}"

    # Hardening holds: the daemon runs as a dynamic, unprivileged user.
    seeder.succeed("test $(systemctl show -p DynamicUser --value p2p-peer) = yes")
  '';
}
