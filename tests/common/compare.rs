//! Comparisons shared by the fixture tests of the model families (tests/gemma.rs,
//! tests/phi3.rs, tests/rope_scaling.rs), included with `#[path]`.
#![allow(dead_code)] // not every test binary that includes this module uses every helper

use std::path::PathBuf;

use kiln::formats::WeightStore;

/// `tests/fixtures/<family>/<name>`.
pub fn fixture_in(family: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(family).join(name)
}

/// An empty folder `kiln-<family>-<pid>-<name>` under the temporary directory.
pub fn fresh_dir(family: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-{family}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// ‖got − want‖ / ‖want‖ with lengths equal, both sides finite, the reference non-zero.
pub fn rel_err(what: &str, got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: kiln has {} values, the reference {}", got.len(), want.len());
    assert!(!want.is_empty(), "{what}: nothing to compare");
    assert!(got.iter().chain(want).all(|x| x.is_finite()), "{what}: NaN/inf");
    let num: f64 = got.iter().zip(want).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|y| (*y as f64).powi(2)).sum();
    assert!(den > 0.0, "{what}: the reference is all zeros");
    (num / den).sqrt()
}

/// The f32 values of tensor `key` of a fixture file.
pub fn f32s(store: &WeightStore, key: &str) -> Vec<f32> {
    store.get(key).unwrap_or_else(|e| panic!("fixture {key}: {e}")).to_vec_f32().unwrap()
}
