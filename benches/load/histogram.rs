//! A log-linear histogram of nanosecond values (HdrHistogram's layout, without the crate): exact
//! below 1,024 ns, then 512 buckets per power of two, so any value is known to within 0.2% and
//! memory is fixed (~140 KB) however many events a run delivers.

/// Sub-buckets per power of two: 2^9 = 512.
const SUB_BITS: u32 = 9;
const SUB: u64 = 1 << SUB_BITS;
/// Values at or above 2^42 ns (73 minutes) land in the last bucket.
const MAX_BITS: u32 = 42;
const BUCKETS: usize = ((MAX_BITS - SUB_BITS + 1) as usize) * SUB as usize;

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

fn index(value: u64) -> usize {
    let value = value.min((1u64 << MAX_BITS) - 1);
    if value < 2 * SUB {
        return value as usize;
    }
    let shift = 63 - value.leading_zeros() - SUB_BITS;
    (u64::from(shift) * SUB + (value >> shift)) as usize
}

/// The lowest value of bucket `i` and the bucket's width.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < 2 * SUB {
        return (i, 1);
    }
    let shift = i / SUB - 1;
    ((i - shift * SUB) << shift, 1 << shift)
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.total += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn len(&self) -> usize {
        self.total as usize
    }

    /// The `q` quantile (nearest rank), to within 0.2%: the middle of the bucket holding that
    /// rank, kept within the exact minimum and maximum.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, width) = bounds(i);
                return Some((low + (width - 1) / 2).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// The distribution at a grid of quantiles: every percent from 0 to 90, then dense in the
    /// tail, `q = 1 − 10^−t` for `t` from 1 by 1/40 up to what the sample count resolves
    /// (`q ≤ 1 − 1/n`), then the maximum. Pairs of (quantile, value in ns).
    pub fn cdf(&self) -> Vec<(f64, u64)> {
        if self.total == 0 {
            return Vec::new();
        }
        let limit = (self.total as f64).log10();
        let body = (0..=90).map(|p| f64::from(p) / 100.0);
        let tail = (41..=400)
            .map(|step| f64::from(step) / 40.0)
            .take_while(|&t| t <= limit)
            .map(|t| 1.0 - 10f64.powf(-t));
        let mut points: Vec<(f64, u64)> = body
            .chain(tail)
            .filter_map(|q| Some((q, self.percentile(q)?)))
            .collect();
        points.push((1.0, self.max));
        points
    }
}

/// Checks the bucket layout and the percentiles against sorted samples (run by `cargo test
/// --all-targets`, which starts this bench without `--bench`).
pub fn self_check() -> Result<(), String> {
    for v in (0..5000).chain([1 << 20, 123_456_789, (1 << 42) - 1]) {
        let i = index(v);
        let (low, width) = bounds(i);
        if !(low <= v && v < low + width) || (width > 1 && width * 512 > low) {
            return Err(format!("histogram: {v} in bucket {i} = {low} + {width}"));
        }
    }
    if index((1 << 42) - 1) != BUCKETS - 1 {
        return Err("histogram: the last bucket is not the last index".into());
    }
    let mut h = Histogram::default();
    let samples: Vec<u64> = (1..=10_000u64).map(|i| i * 997 % 200_000 + 50).collect();
    for &s in &samples {
        h.record(s);
    }
    let mut sorted = samples;
    sorted.sort_unstable();
    for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        let exact = sorted[rank - 1] as f64;
        let got = h.percentile(q).unwrap_or_default() as f64;
        if (got - exact).abs() > exact / 500.0 {
            return Err(format!(
                "histogram: quantile {q} is {got}, sorted samples say {exact}"
            ));
        }
    }
    if h.cdf().last() != sorted.last().map(|&m| (1.0, m)).as_ref() {
        return Err("histogram: the CDF does not end at the maximum".into());
    }
    Ok(())
}
