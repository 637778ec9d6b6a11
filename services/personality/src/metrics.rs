//! The personality service's metrics (ARCHITECTURE.md naming:
//! `slough_personality_<what>_<unit>`). Requests and their latency per endpoint come
//! from the bus host, like every service's.

use prometheus::{HistogramOpts, HistogramVec, Registry};
use slough_protocol::personality::{Adherence, Trait};

/// Adherence of scored responses. Labelled by persona id: personas are created by
/// admins only, so the set stays small.
#[derive(Clone)]
pub struct Metrics {
    adherence: HistogramVec,
    trait_adherence: HistogramVec,
}

const SCORE_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0];

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let adherence = HistogramVec::new(
            HistogramOpts::new(
                "slough_personality_adherence_ratio",
                "How well scored responses matched their persona (0 to 1), by persona",
            )
            .buckets(SCORE_BUCKETS.to_vec()),
            &["persona"],
        )?;
        let trait_adherence = HistogramVec::new(
            HistogramOpts::new(
                "slough_personality_trait_adherence_ratio",
                "How well scored responses matched each trait target (0 to 1), by persona \
                 and trait",
            )
            .buckets(SCORE_BUCKETS.to_vec()),
            &["persona", "trait"],
        )?;
        registry.register(Box::new(adherence.clone()))?;
        registry.register(Box::new(trait_adherence.clone()))?;
        Ok(Metrics {
            adherence,
            trait_adherence,
        })
    }

    /// Records one scored response.
    pub fn scored(&self, adherence: &Adherence) {
        self.adherence
            .with_label_values(&[adherence.persona.as_str()])
            .observe(adherence.score);
        for which in Trait::ALL {
            self.trait_adherence
                .with_label_values(&[adherence.persona.as_str(), which.name()])
                .observe(adherence.traits.get(which).score);
        }
    }
}
