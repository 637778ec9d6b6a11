//! The optimizer and its schedule: AdamW (decoupled weight decay), a learning rate that
//! warms up linearly then decays along a cosine to zero, and clipping by global norm.
//! Written here rather than taken from candle-nn because a checkpoint must hold the
//! moments, and candle-nn's AdamW keeps them private.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor, Var};
use slough_modelkit::checkpoint::FloatTensor;

use super::model::float_tensor;

/// AdamW's constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW over named variables, with its moments.
pub struct AdamW {
    config: AdamWConfig,
    /// Steps taken (the bias correction's `t`).
    pub steps: u64,
    /// First and second moments by variable name.
    moments: BTreeMap<String, (Tensor, Tensor)>,
}

impl AdamW {
    /// Zero moments for `variables`.
    pub fn new(config: AdamWConfig, variables: &[(String, &Var)]) -> Result<AdamW> {
        let moments = variables
            .iter()
            .map(|(name, var)| {
                let zeros = var.as_tensor().zeros_like()?;
                Ok((name.clone(), (zeros.clone(), zeros)))
            })
            .collect::<Result<_>>()?;
        Ok(AdamW {
            config,
            steps: 0,
            moments,
        })
    }

    /// One update of every variable with its gradient in `grads` (by name) at `lr`.
    pub fn step(
        &mut self,
        variables: &[(String, &Var)],
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        self.steps += 1;
        let t = self.steps as i32;
        let correct1 = 1.0 - beta1.powi(t);
        let correct2 = 1.0 - beta2.powi(t);
        for (name, var) in variables {
            let Some(grad) = grads.get(name) else {
                continue;
            };
            let (m, v) = self
                .moments
                .get_mut(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no moments for {name}")))?;
            *m = ((&*m * beta1)? + (grad * (1.0 - beta1))?)?;
            *v = ((&*v * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let m_hat = (&*m / correct1)?;
            let v_hat = (&*v / correct2)?;
            let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments as named f32 tensors (`<name>.m`, `<name>.v`) for a checkpoint.
    pub fn state(&self) -> Result<BTreeMap<String, FloatTensor>> {
        let mut out = BTreeMap::new();
        for (name, (m, v)) in &self.moments {
            out.insert(format!("{name}.m"), float_tensor(m)?);
            out.insert(format!("{name}.v"), float_tensor(v)?);
        }
        Ok(out)
    }

    /// Restores [`AdamW::state`] and the step count.
    pub fn load(&mut self, state: &BTreeMap<String, FloatTensor>, steps: u64) -> Result<()> {
        for (name, (m, v)) in self.moments.iter_mut() {
            for (suffix, moment) in [("m", m), ("v", v)] {
                let key = format!("{name}.{suffix}");
                let saved = state.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("the checkpoint has no {key}"))
                })?;
                *moment =
                    Tensor::from_slice(&saved.values, saved.shape.as_slice(), moment.device())?
                        .to_dtype(moment.dtype())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Linear warmup over `warmup` steps to `peak`, then a cosine to zero at `total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`; returns the norm
/// before clipping.
pub fn clip_by_global_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let mut squares = 0.0;
    for grad in grads.values() {
        squares += grad
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = squares.sqrt();
    if norm > max_norm && norm > 0.0 {
        let factor = max_norm / norm;
        for grad in grads.values_mut() {
            *grad = (&*grad * factor)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

    use candle_core::Device;

    use super::*;

    #[test]
    fn warmup_is_linear_then_the_cosine_falls_to_zero() {
        let s = Schedule {
            peak: 1e-3,
            warmup: 4,
            total: 14,
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(s.lr(0), 0.25e-3));
        assert!(close(s.lr(3), 1e-3));
        assert!(close(s.lr(4), 1e-3));
        assert!(close(s.lr(9), 0.5e-3), "{}", s.lr(9));
        assert!(close(s.lr(14), 0.0));
        let lrs: Vec<f64> = (4..=14).map(|i| s.lr(i)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "{lrs:?}");
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_leaves_small_gradients() {
        let dev = Device::Cpu;
        let mut grads = BTreeMap::from([
            ("a".to_owned(), Tensor::new(&[3.0f64, 0.0], &dev).unwrap()),
            (
                "b".to_owned(),
                Tensor::new(&[[0.0f64], [4.0]], &dev).unwrap(),
            ),
        ]);
        let norm = clip_by_global_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-12);
        let a = grads["a"].to_vec1::<f64>().unwrap();
        assert!((a[0] - 0.6).abs() < 1e-12, "{a:?}");
        let after = clip_by_global_norm(&mut grads, 1.0).unwrap();
        assert!((after - 1.0).abs() < 1e-12);
        let norm = clip_by_global_norm(&mut grads, 10.0).unwrap();
        assert!((norm - 1.0).abs() < 1e-12);
        assert!((grads["a"].to_vec1::<f64>().unwrap()[0] - 0.6).abs() < 1e-12);
    }

    #[test]
    fn adamw_takes_a_first_step_of_lr_against_the_gradient() {
        let dev = Device::Cpu;
        let var = Var::new(&[1.0f64, -2.0], &dev).unwrap();
        let vars = vec![("x".to_owned(), &var)];
        let mut opt = AdamW::new(AdamWConfig::default(), &vars).unwrap();
        let grads = BTreeMap::from([("x".to_owned(), Tensor::new(&[0.5f64, -3.0], &dev).unwrap())]);
        opt.step(&vars, &grads, 0.1).unwrap();
        // Bias-corrected, Adam's first step is lr · sign(g) (up to eps).
        let x = var.as_tensor().to_vec1::<f64>().unwrap();
        assert!(
            (x[0] - 0.9).abs() < 1e-6 && (x[1] + 1.9).abs() < 1e-6,
            "{x:?}"
        );
    }
}
