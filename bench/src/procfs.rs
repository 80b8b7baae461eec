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
