//! A delay line for the swarm lab (`bench/swarm/lab.py --rtt-ms`): joins pairs of network
//! interfaces at layer 2 and holds every frame for a fixed time before passing it on, in the
//! order frames came.
//!
//! The lab's kernel has no `netem`, nor a qdisc that honours departure times (`fq`, `etf`) for
//! an eBPF program to set, so the delay is made here, in user space: one `AF_PACKET` socket per
//! interface, with virtio-net headers so that segmentation offload survives the trip (a 64 KB
//! TSO burst crosses as one frame, its checksum still to be filled in). Frames go out through
//! the interface's qdisc, so a `tbf` there still shapes them, and what it drops is dropped.
//! Past [`MAX_HELD`] bytes held at once, frames are dropped as a full link would.
//!
//! `--loss P` drops each frame that arrives with probability P (0 ≤ P < 1), independently of
//! the others, from a pseudo-random sequence that `--seed` fixes. A frame is a packet only
//! where the interfaces do no segmentation offload (`ethtool -K … tso off gso off`, as the lab
//! sets when it asks for loss): one lost TSO frame would be a burst of up to 45 packets lost
//! together. Frames that arrive segmented anyway are counted (`gso=`).
//!
//! ```text
//! delay_line [--loss P] [--seed N] DELAY_US IF_A:IF_B [IF_A:IF_B ...]
//! ```
//!
//! Linux only, as root, in the interfaces' network namespace. It prints `delay_line: ready`
//! once every interface is joined, then, at most once a second while frames cross, what it
//! has counted since it started: `delay_line: frames=… lost=… full=… refused=… gso=…` (frames
//! that arrived, dropped at random, dropped past [`MAX_HELD`] or too long, refused by the
//! outgoing interface's qdisc, and segmented); it runs until killed.

// Raw sockets and epoll through libc: a bench tool, not part of the peer.
#![allow(unsafe_code)]

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() -> std::process::ExitCode {
    match line::run(std::env::args().skip(1).collect()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("delay_line: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    eprintln!("delay_line: Linux (glibc) only");
    std::process::exit(2);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod line {
    use std::collections::VecDeque;
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// Bytes held at once over every direction (a 100 Mbit/s link delayed by 50 ms holds
    /// 625 KB); past it, frames are dropped.
    const MAX_HELD: usize = 64 << 20;

    /// A virtio-net header and the largest frame segmentation offload makes by default
    /// (64 KiB), with room to spare; a longer one (BIG TCP) is dropped, not cut short.
    const BUF: usize = 10 + (64 << 10) + 256;

    /// What the line has done with the frames that arrived (see the module's documentation).
    #[derive(Clone, Copy, Default, PartialEq)]
    struct Counts {
        frames: u64,
        lost: u64,
        full: u64,
        refused: u64,
        gso: u64,
    }

    /// SplitMix64: a fixed sequence of uniform 64-bit values for a seed.
    struct Random(u64);

    impl Random {
        /// A value uniform in [0, 1).
        fn next_f64(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// A frame on its way out.
    struct Held {
        due_ns: u64,
        out: usize,
        frame: Vec<u8>,
    }

    pub fn run(args: Vec<String>) -> Result<(), String> {
        let usage = "usage: delay_line [--loss P] [--seed N] DELAY_US IF_A:IF_B [IF_A:IF_B ...]";
        let mut loss = 0.0f64;
        let mut seed = 1u64;
        let mut rest = args.as_slice();
        while let [flag, value, tail @ ..] = rest {
            match flag.as_str() {
                "--loss" => {
                    loss = value
                        .parse()
                        .map_err(|e| format!("--loss {value:?}: {e}; {usage}"))?;
                    if !(0.0..1.0).contains(&loss) {
                        return Err(format!("--loss {value}: must be at least 0 and under 1"));
                    }
                }
                "--seed" => {
                    seed = value
                        .parse()
                        .map_err(|e| format!("--seed {value:?}: {e}; {usage}"))?;
                }
                _ => break,
            }
            rest = tail;
        }
        let mut random = Random(seed);
        let (delay, pairs) = rest.split_first().ok_or(usage)?;
        let delay_ns = delay
            .parse::<u64>()
            .map_err(|e| format!("delay {delay:?}: {e}; {usage}"))?
            .checked_mul(1_000)
            .ok_or_else(|| format!("delay {delay:?} is too long"))?;
        if pairs.is_empty() {
            return Err(usage.into());
        }
        // sockets[i]'s frames go out through sockets[i ^ 1].
        let mut sockets = Vec::new();
        for pair in pairs {
            let (a, b) = pair
                .split_once(':')
                .ok_or_else(|| format!("{pair:?} is not IF_A:IF_B; {usage}"))?;
            for name in [a, b] {
                sockets.push(open(name).map_err(|e| format!("interface {name}: {e}"))?);
            }
        }
        // SAFETY: no pointers; the result is checked.
        let epoll = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
            .map_err(|e| format!("epoll: {e}"))?;
        // SAFETY: a descriptor just opened and owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        for (i, s) in sockets.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: `ev` lives across the call; both descriptors are open.
            cvt(unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    s.as_raw_fd(),
                    &mut ev,
                )
            })
            .map_err(|e| format!("epoll: {e}"))?;
        }

        // Every socket is bound: frames are being held from here on.
        println!("delay_line: ready");

        let mut queue: VecDeque<Held> = VecDeque::new();
        let mut held = 0usize;
        let mut counts = Counts::default();
        let mut reported = (Counts::default(), now_ns());
        let mut buf = vec![0u8; BUF];
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; sockets.len()];
        loop {
            // Wake for the next frame due, and to report counts that changed.
            let report_due = (counts != reported.0).then_some(reported.1 + 1_000_000_000);
            let due = match (queue.front().map(|h| h.due_ns), report_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = due.map(|due| {
                let left = due.saturating_sub(now_ns());
                libc::timespec {
                    tv_sec: (left / 1_000_000_000) as libc::time_t,
                    tv_nsec: (left % 1_000_000_000) as libc::c_long,
                }
            });
            // SAFETY: `events` has room for `events.len()` entries; `timeout` is a valid
            // timespec or null.
            let n = unsafe {
                libc::epoll_pwait2(
                    epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    timeout.as_ref().map_or(std::ptr::null(), |t| t as *const _),
                    std::ptr::null(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("epoll: {e}"));
            }
            for ev in &events[..n as usize] {
                let i = ev.u64 as usize;
                // Everything waiting on this socket, each frame with its own due time.
                loop {
                    // SAFETY: `buf` is writable for `buf.len()` bytes, and no more are written
                    // (MSG_TRUNC only makes the call return the frame's whole length).
                    let len = unsafe {
                        libc::recv(
                            sockets[i].as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                        )
                    };
                    if len < 0 {
                        let e = io::Error::last_os_error();
                        match e.raw_os_error() {
                            Some(libc::EAGAIN) => break,
                            Some(libc::EINTR) => continue,
                            // The interface went away: the lab is being torn down.
                            Some(libc::ENETDOWN | libc::ENXIO | libc::ENODEV) => {
                                return Err(format!("receiving: {e}"));
                            }
                            // A frame the kernel could not hand over (a GSO type without a
                            // virtio-net header): lost, as on a faulty link.
                            _ => continue,
                        }
                    }
                    let len = len as usize;
                    counts.frames += 1;
                    // The virtio-net header's second byte: the frame's segmentation type.
                    if buf[1] != 0 {
                        counts.gso += 1;
                    }
                    if len > buf.len() || held + len > MAX_HELD {
                        counts.full += 1;
                        continue;
                    }
                    if loss > 0.0 && random.next_f64() < loss {
                        counts.lost += 1;
                        continue;
                    }
                    let now = now_ns();
                    held += len;
                    queue.push_back(Held {
                        due_ns: now + delay_ns,
                        out: i ^ 1,
                        frame: buf[..len].to_vec(),
                    });
                }
            }
            let now = now_ns();
            while queue.front().is_some_and(|h| h.due_ns <= now) {
                let Some(h) = queue.pop_front() else { break };
                held -= h.frame.len();
                // A full qdisc (the shaper's queue) refuses the frame: it is lost, as on the
                // link it emulates.
                // SAFETY: `h.frame` is readable for its length.
                let sent = unsafe {
                    libc::send(
                        sockets[h.out].as_raw_fd(),
                        h.frame.as_ptr().cast(),
                        h.frame.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if sent < 0 {
                    counts.refused += 1;
                }
            }
            if counts != reported.0 && now >= reported.1 + 1_000_000_000 {
                let c = counts;
                println!(
                    "delay_line: frames={} lost={} full={} refused={} gso={}",
                    c.frames, c.lost, c.full, c.refused, c.gso
                );
                reported = (counts, now);
            }
        }
    }

    /// A raw socket on `name` that reads every frame arriving there (not those it sends) and
    /// writes frames out of it, both with a virtio-net header.
    fn open(name: &str) -> io::Result<OwnedFd> {
        let c = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: `c` is a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0 until bound: no frames from other interfaces slip in before `bind`.
        // SAFETY: no pointers; the result is checked.
        let fd = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        })?;
        // SAFETY: a descriptor just opened and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let on: libc::c_int = 1;
        for opt in [libc::PACKET_VNET_HDR, libc::PACKET_IGNORE_OUTGOING] {
            setsockopt(&fd, libc::SOL_PACKET, opt, on)?;
        }
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)?;
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20)?;
        // SAFETY: sockaddr_ll is plain data, valid when zeroed.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = index as libc::c_int;
        // SAFETY: `addr` is a sockaddr_ll of the given size.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(fd)
    }

    fn setsockopt(
        fd: &OwnedFd,
        level: libc::c_int,
        opt: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: `value` is a c_int of the given size.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                opt,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    fn now_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }
}
