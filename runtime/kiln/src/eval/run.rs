//! Running evaluations: loss/perplexity under training masking and generation scored against references.
