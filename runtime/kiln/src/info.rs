//! `kiln info`: what this build can run here.

/// placeholder
pub fn report() {}
