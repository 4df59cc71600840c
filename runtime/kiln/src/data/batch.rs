//! From tokenized rows to training batches: truncation, padding-free packing (position ids
//! restart per row, segment ids keep attention inside a row), or length-bucketed padding.

use kiln_core::Tensor;

use super::dataset::shuffle;
use super::render::Tokenized;
use crate::Result;

/// One row of a batch: several packed examples, or one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sequence {
    pub ids: Vec<i32>,
    /// Token id where trained, -100 where not.
    pub labels: Vec<i32>,
    /// RoPE positions, restarting at 0 for each packed example.
    pub pos: Vec<i32>,
    /// Which packed example each token belongs to.
    pub seg: Vec<i32>,
}

impl Sequence {
    fn push(&mut self, t: &Tokenized) {
        let s = self.seg.last().map_or(0, |&s| s + 1);
        self.ids.extend_from_slice(&t.ids);
        self.labels.extend(t.ids.iter().zip(&t.mask).map(|(&id, &m)| if m { id } else { -100 }));
        self.pos.extend(0..t.ids.len() as i32);
        self.seg.extend(std::iter::repeat_n(s, t.ids.len()));
    }
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// What batching did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackStats {
    pub rows: usize,
    pub truncated: usize,
    /// Rows left with nothing to train on after truncation (dropped).
    pub dropped: usize,
    pub sequences: usize,
    pub tokens: usize,
}

/// Cuts rows to `max_len` tokens (keeping the start); drops rows with no trained token left.
pub fn truncate(rows: Vec<Tokenized>, max_len: usize, stats: &mut PackStats) -> Vec<Tokenized> {
    stats.rows += rows.len();
    rows.into_iter()
        .filter_map(|mut t| {
            if t.ids.len() > max_len {
                stats.truncated += 1;
                t.ids.truncate(max_len);
                t.mask.truncate(max_len);
            }
            // The first token is never a target (nothing predicts it), so one trained token
            // beyond the first is needed.
            if t.mask.iter().skip(1).any(|&m| m) {
                stats.tokens += t.ids.len();
                Some(t)
            } else {
                stats.dropped += 1;
                None
            }
        })
        .collect()
}

/// Packs rows into sequences of at most `max_len` tokens, first-fit over rows sorted longest
/// first (deterministic: ties keep input order). First-fit puts each row into the earliest
/// sequence with room; [`FreeSpace`] finds that sequence in O(log n), so packing is
/// O(n log n) (a million short rows in about a second) rather than a scan of every open
/// sequence per row.
pub fn pack(rows: &[Tokenized], max_len: usize, stats: &mut PackStats) -> Vec<Sequence> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rows[i].ids.len()));
    let mut free = FreeSpace::new(rows.len(), max_len);
    let mut bins: Vec<Sequence> = Vec::new();
    for i in order {
        let n = rows[i].ids.len();
        // Sequences not yet opened have all of `max_len` free, and sit after every open one:
        // when no open sequence has room, the first fit is the next new one.
        let b = free.first_fit(n).unwrap_or(bins.len());
        if b == bins.len() {
            bins.push(Sequence::default());
        }
        bins[b].push(&rows[i]);
        free.set(b, signed(max_len) - signed(bins[b].len()));
    }
    stats.sequences += bins.len();
    bins
}

/// A token count as a signed free-space value (saturating: no count reaches 2^63).
fn signed(x: usize) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

/// A max segment tree over the free space of `n` sequences: the leftmost sequence with at
/// least `k` tokens free in O(log n). Free space is signed: a row longer than `max_len` (only
/// when the caller did not truncate) leaves its sequence below zero, where nothing fits.
struct FreeSpace {
    size: usize,
    tree: Vec<i64>,
}

impl FreeSpace {
    fn new(n: usize, max_len: usize) -> FreeSpace {
        let size = n.max(1).next_power_of_two();
        FreeSpace { size, tree: vec![signed(max_len); 2 * size] }
    }

    fn set(&mut self, leaf: usize, v: i64) {
        let mut i = self.size + leaf;
        self.tree[i] = v;
        while i > 1 {
            i /= 2;
            self.tree[i] = self.tree[2 * i].max(self.tree[2 * i + 1]);
        }
    }

    fn first_fit(&self, k: usize) -> Option<usize> {
        let k = signed(k);
        if self.tree[1] < k {
            return None;
        }
        let mut i = 1;
        while i < self.size {
            i = if self.tree[2 * i] >= k { 2 * i } else { 2 * i + 1 };
        }
        Some(i - self.size)
    }
}

/// One sequence per row (no packing).
pub fn unpacked(rows: &[Tokenized], stats: &mut PackStats) -> Vec<Sequence> {
    stats.sequences += rows.len();
    rows.iter()
        .map(|r| {
            let mut s = Sequence::default();
            s.push(r);
            s
        })
        .collect()
}

/// A batch ready for the model (cloning shares the tensors).
#[derive(Clone)]
pub struct Batch {
    /// `[B, T]` ids, positions, segment ids (padding is segment -1) and shifted targets.
    pub ids: Tensor,
    pub pos: Tensor,
    pub seg: Tensor,
    pub targets: Tensor,
    /// Target tokens that count in the loss.
    pub n_targets: usize,
}

/// Groups sequences into batches of `batch_size`, padding each to its longest row with
/// `pad_id`. With `by_length`, rows of similar length share a batch (less padding); batch
/// order is shuffled by `seed` either way.
pub fn batches(
    mut seqs: Vec<Sequence>,
    batch_size: usize,
    by_length: bool,
    pad_id: i32,
    seed: u64,
) -> Result<Vec<Batch>> {
    if by_length {
        seqs.sort_by_key(|s| s.len());
    }
    let mut groups: Vec<Vec<Sequence>> = Vec::new();
    let mut it = seqs.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(batch_size.max(1)).collect());
    }
    shuffle(&mut groups, seed);
    groups.into_iter().map(|g| to_batch(&g, pad_id)).collect()
}

/// Pads sequences into one batch.
pub fn to_batch(g: &[Sequence], pad_id: i32) -> Result<Batch> {
    let (b, t) = (g.len(), g.iter().map(|s| s.len()).max().unwrap_or(1).max(1));
    let (mut ids, mut labels, mut pos, mut seg) =
        (vec![pad_id; b * t], vec![-100; b * t], vec![0; b * t], vec![-1; b * t]);
    for (r, s) in g.iter().enumerate() {
        let o = r * t;
        ids[o..o + s.len()].copy_from_slice(&s.ids);
        labels[o..o + s.len()].copy_from_slice(&s.labels);
        pos[o..o + s.len()].copy_from_slice(&s.pos);
        seg[o..o + s.len()].copy_from_slice(&s.seg);
    }
    let targets = shift_targets(&labels, b, t, Some(&seg));
    let n_targets = targets.iter().filter(|&&x| x >= 0).count();
    Ok(Batch {
        ids: Tensor::from_vec(ids, [b, t])?,
        pos: Tensor::from_vec(pos, [b, t])?,
        seg: Tensor::from_vec(seg, [b, t])?,
        targets: Tensor::from_vec(targets, [b, t])?,
        n_targets,
    })
}

/// Shifted targets for causal LM training from per-position labels (`< 0` ignored): position
/// `t` predicts `labels[t+1]`; the last position of each row (and of each packed segment)
/// predicts nothing. This is transformers' loss shift.
pub fn shift_targets(labels: &[i32], b: usize, t: usize, seg: Option<&[i32]>) -> Vec<i32> {
    let mut out = vec![-100; b * t];
    for r in 0..b {
        for i in 0..t.saturating_sub(1) {
            let (cur, next) = (r * t + i, r * t + i + 1);
            if seg.is_none_or(|s| s[cur] == s[next]) {
                out[cur] = labels[next];
            }
        }
    }
    out
}
