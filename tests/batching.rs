//! Truncation, packing and batching; packed rows through the model give each row's own loss;
//! masked targets contribute nothing to the loss or its gradients.

use std::path::PathBuf;

use kiln::core::{Tape, Tensor, Var, ops};
use kiln::data::batch::{PackStats, batches, pack, to_batch, truncate, unpacked};
use kiln::data::render::Tokenized;
use kiln::model::{Inputs, Llama};

fn row(ids: &[i32], trained_from: usize) -> Tokenized {
    Tokenized { ids: ids.to_vec(), mask: (0..ids.len()).map(|i| i >= trained_from).collect() }
}

#[test]
fn packing_restarts_positions_and_separates_segments() {
    let rows = vec![row(&[1, 2, 3, 4, 5], 2), row(&[6, 7, 8], 1), row(&[9, 10, 11, 12], 0), row(&[13, 14], 1)];
    let mut st = PackStats::default();
    let rows = truncate(rows, 8, &mut st);
    let seqs = pack(&rows, 8, &mut st);
    assert_eq!(st.sequences, 2);
    // Longest first, first fit: [5 + 3] and [4 + 2].
    assert_eq!(seqs[0].ids, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(seqs[0].pos, vec![0, 1, 2, 3, 4, 0, 1, 2]);
    assert_eq!(seqs[0].seg, vec![0, 0, 0, 0, 0, 1, 1, 1]);
    assert_eq!(seqs[0].labels, vec![-100, -100, 3, 4, 5, -100, 7, 8]);
    assert_eq!(seqs[1].ids, vec![9, 10, 11, 12, 13, 14]);
    let b = to_batch(&seqs, 0).unwrap();
    let t = b.targets.as_slice::<i32>().unwrap();
    // Row 0: position 4 (last of segment 0) must not predict segment 1's first token.
    assert_eq!(&t[..8], &[-100, 3, 4, 5, -100, 7, 8, -100]);
    // Row 1 is padded to 8 with segment -1 and no targets.
    assert_eq!(&t[8..], &[10, 11, 12, -100, 14, -100, -100, -100]);
    assert_eq!(&b.seg.as_slice::<i32>().unwrap()[14..], &[-1, -1]);
    assert_eq!(b.n_targets, 9);
}

#[test]
fn truncation_is_counted_and_empty_rows_dropped() {
    let mut st = PackStats::default();
    let rows = truncate(vec![row(&[1, 2, 3, 4, 5, 6], 1), row(&[1, 2, 3, 4], 3), row(&[1, 2], 1)], 3, &mut st);
    assert_eq!((st.rows, st.truncated, st.dropped, rows.len()), (3, 2, 1, 2));
    assert!(rows.iter().all(|r| r.ids.len() <= 3));
}

#[test]
fn bucketing_groups_similar_lengths_and_is_seeded() {
    let rows: Vec<Tokenized> = (1..=12).map(|n| row(&vec![1; n * 3], 0)).collect();
    let mut st = PackStats::default();
    let seqs = unpacked(&rows, &mut st);
    let a = batches(seqs.clone(), 4, true, 0, 5).unwrap();
    let widths: Vec<usize> = a.iter().map(|b| b.ids.dims()[1]).collect();
    let mut sorted = widths.clone();
    sorted.sort();
    assert_eq!(sorted, vec![12, 24, 36]);
    let again: Vec<usize> = batches(seqs, 4, true, 0, 5).unwrap().iter().map(|b| b.ids.dims()[1]).collect();
    assert_eq!(widths, again);
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen3")
}

#[test]
fn packed_batch_loss_is_the_token_weighted_loss_of_its_rows() {
    let model = Llama::load(&fixture(), false).unwrap();
    let v = model.config.vocab_size as i32;
    let rows: Vec<Tokenized> = [(9, 3), (14, 5), (5, 1)]
        .iter()
        .enumerate()
        .map(|(k, &(n, from))| row(&(0..n).map(|i| (i * 7 + k as i32 * 13) % v).collect::<Vec<_>>(), from))
        .collect();
    let mut st = PackStats::default();
    let packed = to_batch(&pack(&rows, 32, &mut st), 0).unwrap();
    assert_eq!(st.sequences, 1);
    let tape = Tape::no_grad();
    let loss = |b: &kiln::data::batch::Batch| {
        let ce = model
            .loss(
                &tape,
                &Inputs { ids: &b.ids, pos: &b.pos, seg: Some(&b.seg), shared_prefix: false, base_only: false },
                &b.targets,
                None,
                false,
            )
            .unwrap();
        (ce.loss.value().item().unwrap(), ce.n_valid)
    };
    let (lp, np) = loss(&packed);
    let (mut sum, mut n) = (0.0, 0);
    for r in &rows {
        let b = to_batch(&unpacked(std::slice::from_ref(r), &mut PackStats::default()), 0).unwrap();
        let (l, k) = loss(&b);
        sum += l * k as f64;
        n += k;
    }
    assert_eq!(np, n);
    assert!((lp - sum / n as f64).abs() < 1e-5, "packed {lp} vs rows {}", sum / n as f64);
}

#[test]
fn masked_targets_contribute_nothing() {
    let (m, vocab) = (6, 11);
    let logits: Vec<f32> = (0..m * vocab).map(|i| ((i * 37 % 17) as f32 - 8.0) / 3.0).collect();
    let logits = Var::leaf(Tensor::from_vec(logits, [m, vocab]).unwrap(), true);
    let targets = Tensor::from_vec(vec![3, -100, 5, -100, -100, 0], [m]).unwrap();
    let tape = Tape::new();
    let ce = ops::cross_entropy(&tape, &logits, &targets).unwrap();
    assert_eq!(ce.n_valid, 3);
    let g = tape.backward(&ce.loss).unwrap().get(&logits).unwrap().to_vec_f32().unwrap();
    for r in [1, 3, 4] {
        assert!(g[r * vocab..(r + 1) * vocab].iter().all(|&x| x == 0.0), "row {r} has gradient");
    }
    // The loss is the mean over the three trained rows only.
    let lv = logits.value().to_vec_f64().unwrap();
    let nll = |r: usize, t: usize| {
        let row = &lv[r * vocab..(r + 1) * vocab];
        let mx = row.iter().cloned().fold(f64::MIN, f64::max);
        mx + row.iter().map(|x| (x - mx).exp()).sum::<f64>().ln() - row[t]
    };
    let want = (nll(0, 3) + nll(2, 5) + nll(5, 0)) / 3.0;
    assert!((ce.loss.value().item().unwrap() - want).abs() < 1e-5);
}

/// The packer as it was: first-fit by scanning every open sequence (quadratic), kept as the
/// oracle the O(n log n) packer must match exactly.
fn pack_by_scan(rows: &[Tokenized], max_len: usize) -> Vec<Vec<i32>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rows[i].ids.len()));
    let mut bins: Vec<Vec<i32>> = Vec::new();
    for i in order {
        let n = rows[i].ids.len();
        match bins.iter_mut().find(|b| b.len() + n <= max_len) {
            Some(b) => b.extend_from_slice(&rows[i].ids),
            None => bins.push(rows[i].ids.clone()),
        }
    }
    bins
}

#[test]
fn packing_equals_first_fit_by_scan_on_random_rows() {
    let mut rng = kiln::core::rng::Rng::new(7);
    for case in 0..300 {
        let max_len = 1 + rng.below(64);
        let n = rng.below(200);
        // Lengths up to past max_len (rows a caller did not truncate) and empty ones too.
        let rows: Vec<Tokenized> = (0..n)
            .map(|r| {
                let len = rng.below(max_len + 3);
                Tokenized { ids: (0..len).map(|j| (r * 1000 + j) as i32).collect(), mask: vec![true; len] }
            })
            .collect();
        let mut st = PackStats::default();
        let got: Vec<Vec<i32>> = pack(&rows, max_len, &mut st).into_iter().map(|s| s.ids).collect();
        let want = pack_by_scan(&rows, max_len);
        assert_eq!(got, want, "case {case}: {n} rows, max_len {max_len}");
        assert_eq!(st.sequences, want.len());
    }
}
