//! Key/value cache for incremental decoding, with per-row validity so rows of a batch can
//! start at different columns (left padding) and be swapped in and out (continuous batching).

use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};

/// Per-layer keys and values `[batch, kv_heads, capacity, head_dim]`, of which the first
/// `len` columns are filled, plus `valid` `[batch, capacity]`: whether a column holds a real
/// token of that row (false for padding and for columns of rows that left the batch).
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    valid: Tensor,
    len: i64,
    batch: i64,
    kv_heads: i64,
    head_dim: i64,
    kind: Kind,
    device: Device,
}

impl KvCache {
    /// An empty cache for `batch` rows with room for `capacity` columns (it grows as needed).
    pub fn new(
        layers: usize,
        batch: i64,
        kv_heads: i64,
        head_dim: i64,
        capacity: i64,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let cap = capacity.max(1);
        let mk = || Tensor::f_zeros([batch, kv_heads, cap, head_dim], (kind, device));
        let mut keys = Vec::with_capacity(layers);
        let mut values = Vec::with_capacity(layers);
        for _ in 0..layers {
            keys.push(mk()?);
            values.push(mk()?);
        }
        Ok(KvCache {
            keys,
            values,
            valid: Tensor::f_zeros([batch, cap], (Kind::Bool, device))?,
            len: 0,
            batch,
            kv_heads,
            head_dim,
            kind,
            device,
        })
    }

    /// Number of filled columns.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// True when no column is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of rows.
    pub fn batch(&self) -> i64 {
        self.batch
    }

    fn capacity(&self) -> i64 {
        self.valid.size()[1]
    }

    /// Validity of the first `n` columns, `[batch, n]`.
    pub(crate) fn valid_upto(&self, n: i64) -> Result<Tensor> {
        Ok(self.valid.f_narrow(1, 0, n)?)
    }

    /// Validity of the filled columns, `[batch, len]`.
    pub fn valid(&self) -> Result<Tensor> {
        Ok(self.valid.f_narrow(1, 0, self.len)?)
    }

    /// Makes room for `extra` more columns, doubling the capacity when it runs out.
    pub(crate) fn reserve(&mut self, extra: i64) -> Result<()> {
        let need = self.len + extra;
        let cap = self.capacity();
        if need <= cap {
            return Ok(());
        }
        let new_cap = need.max(cap * 2);
        let grow = |t: &Tensor| -> Result<Tensor> {
            let s = t.size();
            let n = Tensor::f_zeros([s[0], s[1], new_cap, s[3]], (self.kind, self.device))?;
            n.f_narrow(2, 0, self.len)?
                .f_copy_(&t.f_narrow(2, 0, self.len)?)?;
            Ok(n)
        };
        self.keys = self.keys.iter().map(grow).collect::<Result<_>>()?;
        self.values = self.values.iter().map(grow).collect::<Result<_>>()?;
        let v = Tensor::f_zeros([self.batch, new_cap], (Kind::Bool, self.device))?;
        v.f_narrow(1, 0, self.len)?
            .f_copy_(&self.valid.f_narrow(1, 0, self.len)?)?;
        self.valid = v;
        Ok(())
    }

    /// Records validity of `new_valid.size()[1]` columns about to be appended (call once per
    /// forward, before the per-layer [`KvCache::append`]s; they all use the same start column).
    pub(crate) fn push_valid(&mut self, new_valid: &Tensor) -> Result<()> {
        let l = new_valid.size()[1];
        self.reserve(l)?;
        self.valid.f_narrow(1, self.len, l)?.f_copy_(new_valid)?;
        Ok(())
    }

    /// Writes this step's keys/values of `layer` after the filled columns and returns views of
    /// everything filled so far (including them).
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let l = k.size()[2];
        let total = self.len + l;
        let kc = &self.keys[layer];
        let vc = &self.values[layer];
        kc.f_narrow(2, self.len, l)?.f_copy_(k)?;
        vc.f_narrow(2, self.len, l)?.f_copy_(v)?;
        Ok((kc.f_narrow(2, 0, total)?, vc.f_narrow(2, 0, total)?))
    }

    /// Marks `l` appended columns as filled (after every layer has appended).
    pub(crate) fn advance(&mut self, l: i64) {
        self.len += l;
    }

    /// Keeps only the rows in `rows` (in that order).
    pub fn select_rows(&mut self, rows: &[i64]) -> Result<()> {
        let idx = Tensor::from_slice(rows).f_to_device(self.device)?;
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.f_index_select(0, &idx)?;
        }
        self.valid = self.valid.f_index_select(0, &idx)?;
        self.batch = rows.len() as i64;
        Ok(())
    }

    /// Drops leading columns that no row uses any more, so the cache does not grow without
    /// bound while rows come and go.
    pub fn trim_front(&mut self) -> Result<()> {
        if self.len == 0 || self.batch == 0 {
            self.len = 0;
            return Ok(());
        }
        let used = self
            .valid()?
            .f_any_dims([0i64].as_slice(), false)?
            .f_to_device(Device::Cpu)?;
        let used: Vec<bool> = Vec::<bool>::try_from(&used)?;
        let first = used.iter().position(|&u| u).unwrap_or(used.len()) as i64;
        if first == 0 {
            return Ok(());
        }
        let keep = self.len - first;
        let shift = |t: &Tensor, dim: i64| -> Result<Tensor> {
            // A fresh buffer: the source and destination ranges overlap when `keep > first`,
            // and a narrow of a one-row tensor is already contiguous (no copy would be made).
            let src = t.f_narrow(dim, first, keep)?;
            let mut kept = src.f_empty_like()?;
            kept.f_copy_(&src)?;
            t.f_narrow(dim, 0, keep)?.f_copy_(&kept)?;
            Ok(t.shallow_clone())
        };
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = shift(t, 2)?;
        }
        self.valid = shift(&self.valid, 1)?;
        let _ = self
            .valid
            .f_narrow(1, keep, self.capacity() - keep)?
            .f_fill_(0)?;
        self.len = keep;
        Ok(())
    }

    /// Appends the rows of `other` to this cache. Both are right-aligned (the newest column
    /// of every row is the last one), so the shorter one is padded at the front.
    pub fn concat_rows(&mut self, other: &KvCache) -> Result<()> {
        if self.keys.len() != other.keys.len()
            || self.kv_heads != other.kv_heads
            || self.head_dim != other.head_dim
        {
            return Err(ModelError::Input("caches of different models".into()));
        }
        let len = self.len.max(other.len);
        let cap = len.max(self.capacity());
        let front = |t: &Tensor, t_len: i64, dim: i64| -> Result<Tensor> {
            let filled = t.f_narrow(dim, 0, t_len)?;
            let mut size = t.size();
            size[dim as usize] = cap;
            let out = Tensor::f_zeros(size.as_slice(), (t.kind(), self.device))?;
            out.f_narrow(dim, len - t_len, t_len)?.f_copy_(&filled)?;
            Ok(out)
        };
        for (i, (k, v)) in self.keys.iter_mut().zip(self.values.iter_mut()).enumerate() {
            let a = front(k, self.len, 2)?;
            let b = front(&other.keys[i], other.len, 2)?;
            *k = Tensor::f_cat(&[a, b], 0)?;
            let a = front(v, self.len, 2)?;
            let b = front(&other.values[i], other.len, 2)?;
            *v = Tensor::f_cat(&[a, b], 0)?;
        }
        let a = front(&self.valid, self.len, 1)?;
        let b = front(&other.valid, other.len, 1)?;
        self.valid = Tensor::f_cat(&[a, b], 0)?;
        self.batch += other.batch;
        self.len = len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row whose live columns overlap where they move to: the shift must not read what
    /// it has already written.
    #[test]
    fn trim_front_of_a_single_row_keeps_its_columns() {
        let mut c = KvCache::new(1, 1, 1, 1, 8, Kind::Float, Device::Cpu).unwrap();
        let vals: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let k = Tensor::from_slice(&vals).view([1, 1, 6, 1]);
        let valid = Tensor::from_slice(&[false, false, true, true, true, true]).view([1, 6]);
        c.push_valid(&valid).unwrap();
        let _filled = c.append(0, &k, &k).unwrap();
        c.advance(6);
        c.trim_front().unwrap();
        assert_eq!(c.len(), 4);
        let kept = Vec::<f32>::try_from(c.keys[0].narrow(2, 0, 4).reshape([-1])).unwrap();
        assert_eq!(kept, vec![2.0, 3.0, 4.0, 5.0]);
        let v = Vec::<bool>::try_from(c.valid().unwrap().reshape([-1])).unwrap();
        assert_eq!(v, vec![true; 4]);
    }
}
