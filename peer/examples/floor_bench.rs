//! The floor under a one-to-one transfer on this machine: the least work the peer protocol asks
//! for, done by a minimal program (blocking threads, no runtime, no frames, no scheduling, no
//! state file), so it shows how fast any implementation of the protocol could possibly go here.
//!
//! Usage: `floor_bench FILE [ROUNDS]` (`bench/transfer/run.sh` runs it on tmpfs).
//!
//! Each stage adds one piece of required work to the one before:
//! - `copy`: the sender reads FILE in 256 KiB chunks and writes them to a loopback TCP socket;
//!   the receiver reads them and writes them into a new file (the kernel's copies and new pages).
//! - `+sha256`: the receiver also runs SHA-256's compression over every chunk, four chunks at a
//!   time in interleaved lanes (`p2p_proto::sha256_lanes`, the peer's own hashing).
//! - `+aes-gcm`: the sender seals every Noise-sized record (65 519 bytes + 16-byte tag) with
//!   AES-256-GCM (ring, in place) and the receiver opens it, as the Noise transport does.
//!
//! The receiver runs as two threads (network: receive and decrypt; disk: hash and write) and
//! the sender as one, so the work spreads over two cores. Every stage prints its wall-clock
//! MB/s (best of ROUNDS), the CPU seconds the whole process spent per GiB, and the ceiling that
//! CPU time allows on this machine's cores with perfect balance and nothing else running:
//! bytes / (CPU seconds / cores). No implementation that does the stage's work, with the copies
//! the socket and file APIs imply, gets meaningfully past that ceiling here (it is itself a
//! measurement, a few per cent either way).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use anyhow::{Context, bail};
use p2p_peer::net::secure::{MAX_PLAINTEXT as RECORD, TAG_LEN as TAG};
use p2p_proto::manifest::CHUNK_SIZE;
use p2p_proto::sha256_lanes::{MAX_LANES, compress_lanes};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// The protocol's chunk; every chunk travels as Noise transport messages of up to `RECORD`
/// plaintext bytes, each with its tag.
const CHUNK: usize = CHUNK_SIZE as usize;

#[derive(Clone, Copy, PartialEq)]
enum Stage {
    Copy,
    Sha,
    ShaAes,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Copy => "copy",
            Stage::Sha => "copy +sha256",
            Stage::ShaAes => "copy +sha256 +aes-gcm",
        }
    }
    fn hashes(self) -> bool {
        self != Stage::Copy
    }
    fn encrypts(self) -> bool {
        self == Stage::ShaAes
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next().map(PathBuf::from) else {
        bail!("usage: floor_bench FILE [ROUNDS]");
    };
    let rounds: usize = args.next().map_or(Ok(3), |r| r.parse())?;
    let size = std::fs::metadata(&file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let out = std::env::temp_dir().join(format!("floor-bench-{}.out", std::process::id()));
    println!(
        "floor: {} MiB one to one over loopback TCP, {cores} cores, best of {rounds}",
        size >> 20
    );
    for stage in [Stage::Copy, Stage::Sha, Stage::ShaAes] {
        let mut best_wall = f64::MAX;
        let mut best_cpu = f64::MAX;
        for _ in 0..rounds {
            let _ = std::fs::remove_file(&out);
            let cpu0 = cpu_seconds()?;
            let t = Instant::now();
            let digest = run(stage, &file, &out)?;
            let wall = t.elapsed().as_secs_f64();
            let cpu = cpu_seconds()? - cpu0;
            std::hint::black_box(digest);
            best_wall = best_wall.min(wall);
            best_cpu = best_cpu.min(cpu);
        }
        // Outside the timing: the copy must be the file, byte for byte.
        if !same_content(&file, &out)? {
            bail!("{}: the copy differs from {}", stage.name(), file.display());
        }
        let _ = std::fs::remove_file(&out);
        let gib = size as f64 / f64::from(1u32 << 30);
        println!(
            "{:<24} {:>6.0} MB/s wall   {:.2} CPU s/GiB   ceiling on {cores} cores {:>6.0} MB/s",
            stage.name(),
            size as f64 / best_wall / 1e6,
            best_cpu / gib,
            size as f64 / (best_cpu / cores as f64) / 1e6,
        );
    }
    Ok(())
}

/// User + system CPU time of this whole process so far (`/proc/self/stat`, clock ticks).
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/self/stat")?;
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let mut times = rest.split_whitespace().skip(11).take(2);
    let mut next = || -> anyhow::Result<f64> {
        Ok(times
            .next()
            .context("/proc/self/stat: no CPU times")?
            .parse()?)
    };
    let ticks = next()? + next()?;
    Ok(ticks / 100.0)
}

/// Whether two files hold the same bytes.
fn same_content(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let (n, m) = (read_full(&mut a, &mut x)?, read_full(&mut b, &mut y)?);
        if x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn key() -> anyhow::Result<LessSafeKey> {
    let key = UnboundKey::new(&AES_256_GCM, &[7u8; 32]).map_err(|_| anyhow::anyhow!("key"))?;
    Ok(LessSafeKey::new(key))
}

fn nonce(n: u64) -> Nonce {
    // Noise's AESGCM nonce: 4 zero bytes, then the counter big-endian.
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// Sends `file` to a fresh receiver that writes it to `out`; returns the content's last SHA-256
/// chaining state (zero when the stage does not hash).
fn run(stage: Stage, file: &Path, out: &Path) -> anyhow::Result<[u32; 8]> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let file = file.to_path_buf();
    let sender = thread::spawn(move || send(stage, &file, addr));
    let (stream, _) = listener.accept()?;
    let digest = receive(stage, stream, out)?;
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok(digest)
}

fn send(stage: Stage, file: &Path, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let mut input = File::open(file)?;
    let mut stream = TcpStream::connect(addr)?;
    let key = key()?;
    let mut counter = 0u64;
    let mut chunk = vec![0u8; CHUNK];
    // One chunk's records with their tags, as they go on the wire, read straight into place.
    let mut wire = vec![0u8; CHUNK + CHUNK.div_ceil(RECORD) * TAG];
    loop {
        if !stage.encrypts() {
            let n = read_full(&mut input, &mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            stream.write_all(&chunk[..n])?;
            continue;
        }
        let mut len = 0;
        let mut plain = 0;
        while plain < CHUNK {
            let want = RECORD.min(CHUNK - plain);
            let n = read_full(&mut input, &mut wire[len..len + want])?;
            if n == 0 {
                break;
            }
            let tag = key
                .seal_in_place_separate_tag(nonce(counter), Aad::empty(), &mut wire[len..len + n])
                .map_err(|_| anyhow::anyhow!("seal"))?;
            counter += 1;
            wire[len + n..len + n + TAG].copy_from_slice(tag.as_ref());
            len += n + TAG;
            plain += n;
            if n < want {
                break;
            }
        }
        if len == 0 {
            return Ok(());
        }
        stream.write_all(&wire[..len])?;
    }
}

fn receive(stage: Stage, mut stream: TcpStream, out: &Path) -> anyhow::Result<[u32; 8]> {
    let mut output = File::create(out)?;
    // The disk thread hashes and writes; buffers go back to the network thread for reuse.
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(8);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..8 {
        empty_tx.send(vec![0u8; CHUNK + CHUNK.div_ceil(RECORD) * TAG])?;
    }
    let hashes = stage.hashes();
    let disk = thread::spawn(move || -> anyhow::Result<[u32; 8]> {
        let mut state = [0u32; 8];
        let mut batch: Vec<(Vec<u8>, usize)> = Vec::with_capacity(MAX_LANES);
        let mut flush = |batch: &mut Vec<(Vec<u8>, usize)>| -> anyhow::Result<()> {
            if hashes {
                // Independent chunks in lanes, as the peer checks each against its own
                // starting state; the floor keeps the last state so nothing is optimised out.
                let mut lanes: Vec<([u32; 8], &[[u8; 64]])> = batch
                    .iter()
                    .map(|(buf, n)| (state, buf[..*n].as_chunks::<64>().0))
                    .collect();
                compress_lanes(&mut lanes);
                if let Some((s, _)) = lanes.last() {
                    state = *s;
                }
            }
            for (buf, n) in batch.drain(..) {
                output.write_all(&buf[..n])?;
                let _ = empty_tx.send(buf);
            }
            Ok(())
        };
        while let Ok(item) = full_rx.recv() {
            batch.push(item);
            if batch.len() == MAX_LANES {
                flush(&mut batch)?;
            }
        }
        flush(&mut batch)?;
        Ok(state)
    });
    let key = key()?;
    let mut counter = 0u64;
    loop {
        let mut buf = empty_rx.recv()?;
        let n = if stage.encrypts() {
            // Records arrive whole, so one chunk is its records back to back.
            let wire_len = read_full(&mut stream, &mut buf)?;
            if wire_len == 0 {
                0
            } else {
                let mut plain = 0;
                let mut at = 0;
                while at < wire_len {
                    let len = (wire_len - at).min(RECORD + TAG);
                    // Opened where it arrived, its plaintext written right after the previous
                    // record's in the same pass (as the peer's receiver does), so the chunk
                    // comes out contiguous without a copy.
                    let opened = key
                        .open_within(
                            nonce(counter),
                            Aad::empty(),
                            &mut buf[plain..at + len],
                            at - plain..,
                        )
                        .map_err(|_| anyhow::anyhow!("open"))?
                        .len();
                    counter += 1;
                    plain += opened;
                    at += len;
                }
                plain
            }
        } else {
            read_full(&mut stream, &mut buf[..CHUNK])?
        };
        if n == 0 {
            break;
        }
        full_tx.send((buf, n))?;
    }
    drop(full_tx);
    disk.join()
        .map_err(|_| anyhow::anyhow!("disk thread panicked"))?
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
