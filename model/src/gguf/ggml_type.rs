//! The ggml tensor types: ids as stored in GGUF files, names, and block layouts (how many
//! values a block holds and how many bytes it takes), as ggml defines them.

use std::fmt;

/// A ggml tensor type. Every type of the GGUF specification is known (so that any file's
/// layout can be checked); [`GgmlType::dequantizable`] says which ones can be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
}

/// Every type, in id order.
const ALL: &[GgmlType] = {
    use GgmlType::*;
    &[
        F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ2_XXS,
        IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, I8, I16, I32, I64, F64, IQ1_M, BF16,
        TQ1_0, TQ2_0, MXFP4, NVFP4, Q1_0,
    ]
};

/// The types [`GgufFile::dequantize`](crate::gguf::GgufFile::dequantize) turns into f32, in
/// the order documentation lists them.
pub const DEQUANTIZABLE: &[GgmlType] = {
    use GgmlType::*;
    &[
        F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K,
    ]
};

impl GgmlType {
    /// (GGUF id, ggml name, values per block, bytes per block), as ggml defines them.
    fn layout(self) -> (u32, &'static str, u64, u64) {
        use GgmlType::*;
        match self {
            F32 => (0, "F32", 1, 4),
            F16 => (1, "F16", 1, 2),
            Q4_0 => (2, "Q4_0", 32, 18),
            Q4_1 => (3, "Q4_1", 32, 20),
            Q5_0 => (6, "Q5_0", 32, 22),
            Q5_1 => (7, "Q5_1", 32, 24),
            Q8_0 => (8, "Q8_0", 32, 34),
            Q8_1 => (9, "Q8_1", 32, 36),
            Q2_K => (10, "Q2_K", 256, 84),
            Q3_K => (11, "Q3_K", 256, 110),
            Q4_K => (12, "Q4_K", 256, 144),
            Q5_K => (13, "Q5_K", 256, 176),
            Q6_K => (14, "Q6_K", 256, 210),
            Q8_K => (15, "Q8_K", 256, 292),
            IQ2_XXS => (16, "IQ2_XXS", 256, 66),
            IQ2_XS => (17, "IQ2_XS", 256, 74),
            IQ3_XXS => (18, "IQ3_XXS", 256, 98),
            IQ1_S => (19, "IQ1_S", 256, 50),
            IQ4_NL => (20, "IQ4_NL", 32, 18),
            IQ3_S => (21, "IQ3_S", 256, 110),
            IQ2_S => (22, "IQ2_S", 256, 82),
            IQ4_XS => (23, "IQ4_XS", 256, 136),
            I8 => (24, "I8", 1, 1),
            I16 => (25, "I16", 1, 2),
            I32 => (26, "I32", 1, 4),
            I64 => (27, "I64", 1, 8),
            F64 => (28, "F64", 1, 8),
            IQ1_M => (29, "IQ1_M", 256, 56),
            BF16 => (30, "BF16", 1, 2),
            TQ1_0 => (34, "TQ1_0", 256, 54),
            TQ2_0 => (35, "TQ2_0", 256, 66),
            MXFP4 => (39, "MXFP4", 32, 17),
            NVFP4 => (40, "NVFP4", 64, 36),
            Q1_0 => (41, "Q1_0", 128, 18),
        }
    }

    /// The type with GGUF id `id`, if ggml defines one.
    pub fn from_id(id: u32) -> Option<Self> {
        ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The id stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        self.layout().0
    }

    /// ggml's name (`Q4_K`, `IQ2_XXS`, ...).
    pub fn name(self) -> &'static str {
        self.layout().1
    }

    /// Values per block.
    pub fn block_size(self) -> u64 {
        self.layout().2
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.layout().3
    }

    /// Whether this crate can dequantise tensors of this type.
    pub fn dequantizable(self) -> bool {
        DEQUANTIZABLE.contains(&self)
    }

    /// The dequantisable type names, comma-separated, for error messages.
    pub(crate) fn dequantizable_names() -> String {
        DEQUANTIZABLE
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_ggml_defines_round_trips() {
        let ids: Vec<u32> = (0..=41)
            .filter(|i| ![4, 5, 31, 32, 33, 36, 37, 38].contains(i))
            .collect();
        assert_eq!(ids.len(), ALL.len());
        for id in ids {
            let t = GgmlType::from_id(id).unwrap_or_else(|| panic!("id {id}"));
            assert_eq!(t.id(), id);
        }
        assert_eq!(GgmlType::from_id(4), None, "Q4_2 was removed from ggml");
        assert_eq!(GgmlType::IQ2_XXS.to_string(), "IQ2_XXS");
        assert_eq!(
            (GgmlType::Q6_K.block_size(), GgmlType::Q6_K.type_size()),
            (256, 210)
        );
        assert!(GgmlType::Q6_K.dequantizable() && !GgmlType::Q2_K.dequantizable());
    }
}
