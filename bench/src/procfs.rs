//! What the kernel says about this process: resident memory, CPU time per
//! thread, the machine's load average. Linux only; `None` elsewhere.

use std::collections::BTreeMap;

/// Resident memory of this process (`VmRSS` in `/proc/self/status`), in bytes.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) used so far by this process's threads,
/// summed by thread name.
pub fn cpu_seconds_by_thread_name() -> BTreeMap<String, f64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ..." - the name may hold spaces; it ends at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state is field 3, utime field 14, stime field 15.
        let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok());
        if let (Some(user), Some(system)) = (ticks(14), ticks(15)) {
            *by_name.entry(name).or_insert(0.0) += (user + system) / USER_HZ;
        }
    }
    by_name
}

/// The calling thread's scheduler times (`/proc/thread-self/schedstat`):
/// time on a CPU and time runnable but waiting for one, in nanoseconds.
/// Read twice around a piece of work, they tell its CPU cost apart from the
/// time other processes held the core.
#[derive(Debug)]
pub struct ThreadSchedstat {
    file: std::fs::File,
    buffer: Vec<u8>,
}

impl ThreadSchedstat {
    /// Opens the calling thread's file (keep it on that thread).
    pub fn open() -> Option<Self> {
        Some(ThreadSchedstat {
            file: std::fs::File::open("/proc/thread-self/schedstat").ok()?,
            buffer: Vec::with_capacity(64),
        })
    }

    /// (time on a CPU, time waiting for a CPU) since the thread started.
    pub fn read(&mut self) -> Option<(std::time::Duration, std::time::Duration)> {
        use std::io::{Read, Seek, SeekFrom};
        self.file.seek(SeekFrom::Start(0)).ok()?;
        self.buffer.clear();
        self.file.read_to_end(&mut self.buffer).ok()?;
        let text = std::str::from_utf8(&self.buffer).ok()?;
        let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
        let on_cpu = fields.next()??;
        let waiting = fields.next()??;
        Some((
            std::time::Duration::from_nanos(on_cpu),
            std::time::Duration::from_nanos(waiting),
        ))
    }
}

/// Thread ids of this process's threads named `name`.
pub fn thread_ids_named(name: &str) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .filter_map(|task| task.file_name().to_str()?.parse().ok())
        .collect()
}
