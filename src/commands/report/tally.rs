//! The report's state: per experiment × epoch × variant counts and latency
//! sketches, the per-unit facts the integrity audit needs, and a coarse
//! timeline of first exposures. Its size depends on the number of units
//! and cells, never on the number of lines: each unit costs one 24-byte
//! hash-table entry (a 128-bit hash of experiment and unit id, and 8 bytes
//! of state), whatever its id's length; each cell one HDR histogram of a
//! few KiB (2 significant digits, auto-resized to the largest latency).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use hdrhistogram::Histogram;

use super::scan::Line;

/// Examples kept per audit check and experiment.
pub(crate) const EXAMPLES_PER_CHECK: usize = 5;
/// Timeline bins kept per experiment (the bin width doubles to stay under).
const MAX_BINS: usize = 240;

/// Everything the report has read so far.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) lines: u64,
    pub(crate) malformed: u64,
    pub(crate) experiments: Vec<Experiment>,
    units: HashMap<UnitKey, UnitState, BuildHasherDefault<KeyHasher>>,
}

/// One experiment's counts.
pub(crate) struct Experiment {
    pub(crate) name: String,
    /// Variant names in order of first appearance; cells index them.
    pub(crate) variants: Vec<String>,
    pub(crate) cells: BTreeMap<(u32, u16), Cell>,
    /// Per (epoch, variant): the `share` values seen (sum, count).
    pub(crate) shares: BTreeMap<(u32, u16), (f64, u64)>,
    /// Per epoch: first exposures logged without `share`.
    pub(crate) missing_share: BTreeMap<u32, u64>,
    /// Per epoch: the earliest first exposure's time (ms since 1970).
    pub(crate) epoch_start: BTreeMap<u32, i64>,
    pub(crate) timeline: Timeline,
    pub(crate) audit: Audit,
}

/// One experiment × epoch × variant.
pub(crate) struct Cell {
    pub(crate) units: u64,
    pub(crate) first_exposures: u64,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    /// `total_ms` in µs.
    pub(crate) latency: Histogram<u64>,
}

impl Cell {
    fn new() -> Cell {
        Cell {
            units: 0,
            first_exposures: 0,
            requests: 0,
            errors: 0,
            latency: Histogram::new(2).expect("2 significant digits are valid"),
        }
    }
}

/// The integrity audit's counts for one experiment.
#[derive(Default)]
pub(crate) struct Audit {
    pub(crate) units_in_several_variants: u64,
    pub(crate) units_with_changed_epoch: u64,
    pub(crate) units_with_several_first_exposures: u64,
    pub(crate) lines_without_stamps: u64,
    pub(crate) examples: Vec<String>,
    kept: [usize; 4],
}

impl Audit {
    pub(crate) fn failed(&self) -> bool {
        self.units_in_several_variants
            + self.units_with_changed_epoch
            + self.units_with_several_first_exposures
            + self.lines_without_stamps
            > 0
    }

    fn example(&mut self, check: usize, text: impl FnOnce() -> String) {
        if self.kept[check] < EXAMPLES_PER_CHECK {
            self.kept[check] += 1;
            self.examples.push(text());
        }
    }
}

/// First exposures per variant over time, in bins whose width doubles
/// (from one second) whenever the span would need more than [`MAX_BINS`].
#[derive(Default)]
pub(crate) struct Timeline {
    /// Start of bin 0, ms since 1970 (a multiple of `width`).
    pub(crate) origin: i64,
    pub(crate) width: i64,
    /// Per variant (experiment's index), counts per bin; all one length.
    pub(crate) bins: Vec<Vec<u64>>,
}

impl Timeline {
    fn add(&mut self, t: i64, variant: usize) {
        if self.width == 0 {
            self.width = 1000;
            self.origin = t.div_euclid(self.width) * self.width;
        }
        while self.bins.len() <= variant {
            let len = self.bins.first().map_or(0, Vec::len);
            self.bins.push(vec![0; len]);
        }
        if t < self.origin {
            let start = t.div_euclid(self.width) * self.width;
            let pad = ((self.origin - start) / self.width) as usize;
            for b in &mut self.bins {
                b.splice(0..0, std::iter::repeat_n(0, pad));
            }
            self.origin = start;
        }
        let mut i = ((t - self.origin) / self.width) as usize;
        while i >= MAX_BINS || self.len() > MAX_BINS {
            self.coarsen();
            i = ((t - self.origin) / self.width) as usize;
        }
        for b in &mut self.bins {
            if b.len() <= i {
                b.resize(i + 1, 0);
            }
        }
        self.bins[variant][i] += 1;
    }

    fn len(&self) -> usize {
        self.bins.first().map_or(0, Vec::len)
    }

    fn coarsen(&mut self) {
        let width = self.width * 2;
        let origin = self.origin.div_euclid(width) * width;
        for b in &mut self.bins {
            let mut out = vec![0; b.len() / 2 + 1];
            for (i, c) in b.iter().enumerate() {
                let t = self.origin + i as i64 * self.width;
                out[((t - origin) / width) as usize] += c;
            }
            while out.len() > 1 && out.last() == Some(&0) {
                out.pop();
            }
            *b = out;
        }
        let len = self.bins.iter().map(Vec::len).max().unwrap_or(0);
        for b in &mut self.bins {
            b.resize(len, 0);
        }
        (self.origin, self.width) = (origin, width);
    }
}

/// A unit within an experiment: a 128-bit hash of both, so a unit costs
/// the same whatever its id's length.
#[derive(PartialEq, Eq, Clone, Copy)]
struct UnitKey(u64, u64);

impl Hash for UnitKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// The key is already a hash: pass its first half through.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

const NO_VARIANT: u16 = u16::MAX;
const FLAG_VARIANTS: u8 = 1;
const FLAG_EPOCH: u8 = 2;

/// What the audit remembers of a unit: 8 bytes.
#[derive(Clone, Copy)]
struct UnitState {
    epoch: u32,
    variant: u16,
    first_exposures: u8,
    flags: u8,
}

/// Two independent 64-bit hashes of (experiment, unit): a multiply-fold
/// hash over 8-byte words (the wyhash idea, not its constants), fast for
/// the short ids units are. Not keyed: the log is trusted input, and a
/// collision can only merge two units' audit facts.
fn unit_key(experiment: usize, unit: &str) -> UnitKey {
    fn fold(a: u64, b: u64) -> u64 {
        let m = u128::from(a) * u128::from(b);
        (m as u64) ^ ((m >> 64) as u64)
    }
    let half = |seed: u64| {
        let mut h = fold(seed ^ experiment as u64, 0xa076_1d64_78bd_642f);
        let bytes = unit.as_bytes();
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            h = fold(h ^ w, 0xe703_7ed1_a0b4_28db);
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        h = fold(h ^ u64::from_le_bytes(tail), 0x8ebc_6af0_9c88_c6e3);
        fold(h ^ bytes.len() as u64, 0x5899_65cc_7537_4cc3)
    };
    UnitKey(half(0x9e37_79b9_7f4a_7c15), half(0x6a09_e667_f3bc_c909))
}

impl Tally {
    /// Counts one line (already read); `at` says where, for examples.
    pub(crate) fn add(&mut self, line: &Line<'_>, at: &dyn Fn() -> String) {
        self.lines += 1;
        let Some(name) = line.experiment.as_deref() else {
            return;
        };
        let e = match self.experiments.iter().position(|x| x.name == name) {
            Some(e) => e,
            None => {
                self.experiments.push(Experiment::new(name));
                self.experiments.len() - 1
            }
        };
        let x = &mut self.experiments[e];
        let reason = line.reason.as_deref();
        let assigned = matches!(reason, Some("new" | "stored"));
        let (Some(variant), Some(epoch)) = (line.variant.as_deref(), line.epoch) else {
            x.audit.lines_without_stamps += 1;
            x.audit.example(3, || {
                format!("{}: experiment line without variant or epoch", at())
            });
            return;
        };
        if assigned && epoch == 0 {
            x.audit.lines_without_stamps += 1;
            x.audit.example(3, || {
                format!("{}: reason {} with epoch 0", at(), reason.unwrap_or(""))
            });
            return;
        }
        let v = x.variant(variant);
        let cell = x.cells.entry((epoch, v)).or_insert_with(Cell::new);
        cell.requests += 1;
        // The proxy's own lack of descriptors is not the variant's failure.
        if line.status >= 500 && line.error.as_deref() != Some("local_resource") {
            cell.errors += 1;
        }
        if let Some(us) = line.total_us {
            if cell.latency.record(us.max(1)).is_err() {
                cell.latency.saturating_record(us.max(1));
            }
        }
        if line.first_exposure {
            cell.first_exposures += 1;
            match line.share {
                Some(s) => {
                    let sh = x.shares.entry((epoch, v)).or_insert((0.0, 0));
                    sh.0 += s;
                    sh.1 += 1;
                }
                None => *x.missing_share.entry(epoch).or_insert(0) += 1,
            }
            if let Some(t) = line.ts.as_deref().and_then(parse_ts) {
                let start = x.epoch_start.entry(epoch).or_insert(t);
                *start = (*start).min(t);
                x.timeline.add(t, usize::from(v));
            }
        }
        let Some(unit) = line.unit.as_deref() else {
            return;
        };
        if epoch == 0 && !line.first_exposure {
            return;
        }
        let st = self.units.entry(unit_key(e, unit)).or_insert(UnitState {
            epoch: 0,
            variant: NO_VARIANT,
            first_exposures: 0,
            flags: 0,
        });
        if line.first_exposure {
            st.first_exposures = st.first_exposures.saturating_add(1);
            if st.first_exposures == 2 {
                x.audit.units_with_several_first_exposures += 1;
                x.audit.example(2, || {
                    format!("{}: unit {unit:?} has a second first exposure", at())
                });
            }
        }
        if epoch > 0 {
            if st.epoch == 0 {
                st.epoch = epoch;
            } else if st.epoch != epoch && st.flags & FLAG_EPOCH == 0 {
                st.flags |= FLAG_EPOCH;
                x.audit.units_with_changed_epoch += 1;
                let was = st.epoch;
                x.audit.example(1, || {
                    format!("{}: unit {unit:?} has epoch {epoch}, earlier {was}", at())
                });
            }
        }
        if assigned {
            if st.variant == NO_VARIANT {
                st.variant = v;
                cell.units += 1;
            } else if st.variant != v && st.flags & FLAG_VARIANTS == 0 {
                st.flags |= FLAG_VARIANTS;
                x.audit.units_in_several_variants += 1;
                let was = x.variants[usize::from(st.variant)].clone();
                x.audit.example(0, || {
                    format!(
                        "{}: unit {unit:?} served {variant:?} ({}), earlier {was:?}",
                        at(),
                        reason.unwrap_or("")
                    )
                });
            }
        }
    }

    /// For each epoch with first exposures logged without `share`, takes
    /// every variant's share from the rule `ledger` recorded for it (its
    /// weight; the store does not record which variants were disabled).
    pub(crate) fn shares_from_ledger(&mut self, ledger: &crate::assign::ledger::Ledger) {
        for x in &mut self.experiments {
            let Some(recorded) = ledger.get(&x.name) else {
                continue;
            };
            let missing: Vec<u32> = x
                .missing_share
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(e, _)| *e)
                .collect();
            for epoch in missing {
                let Some(rec) = recorded.epochs.iter().find(|r| r.epoch.0 == epoch) else {
                    continue;
                };
                x.shares.retain(|(e, _), _| *e != epoch);
                for rv in &rec.rule.variants {
                    let v = x.variant(&rv.name);
                    let share = f64::from(rv.weight.0) / 10_000.0;
                    x.shares.insert((epoch, v), (share, 1));
                }
                x.missing_share.remove(&epoch);
            }
        }
    }

    /// Units the audit holds.
    #[cfg(test)]
    pub(crate) fn units(&self) -> usize {
        self.units.len()
    }
}

impl Experiment {
    fn new(name: &str) -> Experiment {
        Experiment {
            name: name.to_string(),
            variants: Vec::new(),
            cells: BTreeMap::new(),
            shares: BTreeMap::new(),
            missing_share: BTreeMap::new(),
            epoch_start: BTreeMap::new(),
            timeline: Timeline::default(),
            audit: Audit::default(),
        }
    }

    fn variant(&mut self, name: &str) -> u16 {
        match self.variants.iter().position(|v| v == name) {
            Some(i) => i as u16,
            None => {
                self.variants.push(name.to_string());
                (self.variants.len() - 1).min(usize::from(NO_VARIANT - 1)) as u16
            }
        }
    }
}

/// `2026-12-01T09:16:34.500Z` (the log's `ts`) as ms since 1970.
pub(crate) fn parse_ts(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in b.get(r)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = if b[19] == b'.' {
        num(20..23).unwrap_or(0)
    } else {
        0
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), Howard Hinnant's method.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::report::scan::scan;

    #[test]
    fn timestamps_parse_to_unix_millis() {
        assert_eq!(parse_ts("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_ts("2026-12-01T13:33:19.075Z"),
            Some(1_796_131_999_075)
        );
        assert_eq!(parse_ts("2000-03-01T00:00:01Z"), Some(951_868_801_000));
        assert_eq!(parse_ts("garbage"), None);
    }

    #[test]
    fn the_timeline_stays_bounded_and_keeps_every_count() {
        let mut t = Timeline::default();
        let mut n = 0;
        for i in 0..100_000i64 {
            t.add(1_000_000 + i * 997 - (i % 7) * 50_000, (i % 3) as usize);
            n += 1;
        }
        assert!(t.len() <= MAX_BINS, "{}", t.len());
        assert_eq!(t.bins.iter().flatten().sum::<u64>(), n);
    }

    fn add(t: &mut Tally, json: &str) {
        t.add(&scan(json.as_bytes()).unwrap(), &|| "here".into());
    }

    #[test]
    fn the_audit_flags_each_kind_once_per_unit() {
        let mut t = Tally::default();
        let l = |u: &str, v: &str, e: u32, first: bool, reason: &str| {
            format!(
                r#"{{"experiment":"x","unit":"{u}","variant":"{v}","epoch":{e},"first_exposure":{first},"share":0.5,"reason":"{reason}","status":200,"total_ms":1.0}}"#
            )
        };
        add(&mut t, &l("a", "c", 1, true, "new"));
        add(&mut t, &l("a", "c", 1, false, "stored"));
        add(&mut t, &l("a", "t", 1, false, "forced"));
        add(&mut t, &l("a", "t", 1, false, "paused"));
        add(&mut t, &l("b", "t", 1, true, "new"));
        add(&mut t, &l("b", "c", 1, false, "stored"));
        add(&mut t, &l("b", "c", 1, false, "stored"));
        add(&mut t, &l("c", "t", 1, true, "new"));
        add(&mut t, &l("c", "t", 2, false, "stored"));
        add(&mut t, &l("d", "t", 2, true, "new"));
        add(&mut t, &l("d", "t", 2, true, "new"));
        add(
            &mut t,
            r#"{"experiment":"x","unit":"e","variant":null,"epoch":1}"#,
        );
        add(
            &mut t,
            r#"{"experiment":"x","unit":"e","variant":"c","epoch":0,"reason":"stored"}"#,
        );
        add(&mut t, r#"{"experiment":null,"unit":"e"}"#);
        let a = &t.experiments[0].audit;
        assert_eq!(a.units_in_several_variants, 1, "{:?}", a.examples);
        assert_eq!(a.units_with_changed_epoch, 1, "{:?}", a.examples);
        assert_eq!(a.units_with_several_first_exposures, 1, "{:?}", a.examples);
        assert_eq!(a.lines_without_stamps, 2, "{:?}", a.examples);
        assert_eq!(a.examples.len(), 5);
        assert!(a.examples[0].contains("\"b\""), "{:?}", a.examples);
        assert_eq!(t.lines, 14);
        assert_eq!(t.units(), 4);
    }
}
