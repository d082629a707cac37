//! How `evaluate`'s work is laid out in chunks so that no chunk mixes models.

use std::ops::Range;

/// Where each model's work lies among the chunks: model-major, each model's prompt rows
/// padded to a whole number of chunks, so that no chunk mixes models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    n_prompts: usize,
    /// Padded rows per model (a multiple of the chunk size, at least one chunk).
    per_model: usize,
    n_models: usize,
}

impl Layout {
    pub fn new(n_prompts: usize, chunk_rows: usize, n_models: usize) -> Self {
        let chunk_rows = chunk_rows.max(1);
        Layout {
            n_prompts,
            per_model: n_prompts.div_ceil(chunk_rows).max(1) * chunk_rows,
            n_models,
        }
    }

    /// Rows of the chunk loop's (virtual) input.
    pub fn input_rows(&self) -> usize {
        self.per_model * self.n_models
    }

    /// The model and its prompt rows for a chunk's range.
    pub fn locate(&self, range: Range<usize>) -> (usize, Range<usize>) {
        let mi = range.start / self.per_model;
        let offset = mi * self.per_model;
        let start = (range.start - offset).min(self.n_prompts);
        let end = range.end.saturating_sub(offset).min(self.n_prompts);
        (mi, start..end.max(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_never_mixes_models() {
        let l = Layout::new(10, 4, 3);
        assert_eq!(l.input_rows(), 36);
        let chunks: Vec<_> = (0..9)
            .map(|i| l.locate(sspo_engine::run::chunk_range(i, 4, l.input_rows())))
            .collect();
        assert_eq!(
            chunks,
            vec![
                (0, 0..4),
                (0, 4..8),
                (0, 8..10),
                (1, 0..4),
                (1, 4..8),
                (1, 8..10),
                (2, 0..4),
                (2, 4..8),
                (2, 8..10)
            ]
        );
        let empty = Layout::new(0, 4, 2);
        assert_eq!(empty.input_rows(), 8);
        assert_eq!(empty.locate(0..4), (0, 0..0));
        assert_eq!(empty.locate(4..8), (1, 0..0));
    }
}
