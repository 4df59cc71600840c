//! Parity cases of the embedding family: lookups in f32, 16-bit and block-quantized tables,
//! and the scatter-add backward with repeated ids.

use super::{Case, i32s, quantized, randn, rng};
use crate::DType;
use crate::backend::Op;
use crate::quant::GgmlType as G;

/// The embedding family's rows on fresh random inputs from `seed`.
pub fn embedding_cases(seed: u64) -> Vec<Case> {
    let mut r = rng(seed, "embedding");
    let mut out = Vec::new();
    // Block-quantized tables (a GGUF's token_embd stays quantized on the device).
    for (i, ty) in [G::Q8_0, G::Q4_1, G::Q4K, G::NF4].into_iter().enumerate() {
        let v = 5 + 3 * i;
        let wq = quantized(&mut r, ty, v, 256);
        let ids = i32s((0..11).map(|j| ((j * 7 + i) % v) as i32).collect(), &[11]);
        out.push(Case::built(
            Op::Embedding,
            format!("embedding 11 ids, {} table {v}x256", ty.name()),
            DType::Quant(ty),
            wq.map(|wq| vec![wq, ids]),
            |be, x| Ok(vec![be.embedding_fwd(&x[0], &x[1])?]),
        ));
    }
    for &(m, v) in &[(1, 2), (9, 4136), (17, 96)] {
        // 16-bit tables too (frozen embeddings kept in their type on the device).
        for td in [DType::BF16, DType::F16] {
            let inputs = vec![randn(&mut r, &[m, v], td), i32s((0..m).map(|i| (i * 5 % m) as i32).collect(), &[m])];
            out.push(Case::new(
                Op::Embedding,
                format!("embedding {m} ids, {} table {m}x{v}", td.name()),
                td,
                inputs,
                |be, x| Ok(vec![be.embedding_fwd(&x[0], &x[1])?]),
            ));
        }
        let inputs =
            vec![randn(&mut r, &[m, v], DType::F32), i32s((0..m).map(|i| (i * 7 % m / 2) as i32).collect(), &[m])];
        out.push(Case::new(Op::Embedding, format!("embedding {m} ids, table {m}x{v}"), DType::F32, inputs, |be, x| {
            // x[0] [m, v] serves as an m-row table and as the gradient of m lookups (ids repeat).
            let e = be.embedding_fwd(&x[0], &x[1])?;
            let de = be.embedding_bwd(&x[0], &x[1], x[0].dims()[0])?;
            Ok(vec![e, de])
        }));
    }
    out
}
