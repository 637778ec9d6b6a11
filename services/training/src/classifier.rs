//! Classifier jobs: a softmax-regression head (one linear layer) over an embedding
//! model's vectors, learned by backpropagation from labelled texts (`{"text": ...,
//! "label": ...}` per line). A fifth of each label's examples is held out (seeded) to
//! measure accuracy. The head becomes a classifier package the personality service
//! scores texts with.

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Tensor, Var};
use rand::seq::SliceRandom as _;
use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng as _};
use serde::Deserialize;
use slough_modelkit::checkpoint::FloatTensor;

use crate::trainer::{
    data::FileError,
    model::float_tensor,
    optim::{AdamW, AdamWConfig, Schedule},
};

/// Fewest examples a file may hold, and of each label.
const MIN_EXAMPLES: usize = 10;
const MIN_PER_LABEL: usize = 2;

/// A labelled file, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    /// Every label, sorted; examples refer to them by index.
    pub labels: Vec<String>,
    pub texts: Vec<String>,
    pub classes: Vec<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    text: String,
    label: String,
}

/// Parses a labelled JSONL file; the first problem is returned, naming its line.
pub fn parse_file(text: &str) -> Result<Labelled, FileError> {
    let at = |line: usize, message: String| FileError { line, message };
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(line).map_err(|err| {
            at(
                number,
                format!("not a JSON object with `text` and `label`: {err}"),
            )
        })?;
        if parsed.text.trim().is_empty() {
            return Err(at(number, "`text` is empty".to_owned()));
        }
        if parsed.label.trim().is_empty() {
            return Err(at(number, "`label` is empty".to_owned()));
        }
        rows.push(parsed);
    }
    if rows.len() < MIN_EXAMPLES {
        return Err(at(
            0,
            format!(
                "the file holds {} examples; a classifier needs at least {MIN_EXAMPLES}",
                rows.len()
            ),
        ));
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for row in &rows {
        *counts.entry(row.label.clone()).or_default() += 1;
    }
    if counts.len() < 2 {
        return Err(at(0, "a classifier needs at least two labels".to_owned()));
    }
    if let Some((label, count)) = counts.iter().find(|(_, n)| **n < MIN_PER_LABEL) {
        return Err(at(
            0,
            format!("label `{label}` has {count} example; each needs at least {MIN_PER_LABEL}"),
        ));
    }
    let labels: Vec<String> = counts.into_keys().collect();
    let classes = rows
        .iter()
        .map(|row| labels.binary_search(&row.label).unwrap_or(0))
        .collect();
    Ok(Labelled {
        labels,
        texts: rows.into_iter().map(|row| row.text).collect(),
        classes,
    })
}

/// Example indices to train on and to hold out: a fifth of each label (at least one),
/// chosen by `seed`.
pub fn split(classes: &[usize], labels: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut train = Vec::new();
    let mut held_out = Vec::new();
    for label in 0..labels {
        let mut members: Vec<usize> = (0..classes.len())
            .filter(|&i| classes[i] == label)
            .collect();
        members.shuffle(&mut rng);
        let hold = (members.len() / 5).max(1);
        held_out.extend_from_slice(&members[..hold]);
        train.extend_from_slice(&members[hold..]);
    }
    train.sort_unstable();
    held_out.sort_unstable();
    (train, held_out)
}

/// How the head is trained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadSettings {
    pub epochs: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub seed: u64,
}

/// A trained head: `weight` `[labels, dimensions]`, `bias` `[labels]`.
pub struct Head {
    weight: Var,
    bias: Var,
}

fn features_tensor(features: &[&[f32]]) -> candle_core::Result<Tensor> {
    let dims = features.first().map_or(0, |f| f.len());
    let flat: Vec<f32> = features.iter().flat_map(|f| f.iter().copied()).collect();
    Tensor::from_vec(flat, (features.len(), dims), &Device::Cpu)
}

impl Head {
    /// Logits `[rows, labels]`.
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())
    }

    /// Each row's probabilities.
    pub fn probabilities(&self, features: &[&[f32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let x = features_tensor(features)?;
        candle_nn::ops::softmax_last_dim(&self.logits(&x)?)?.to_vec2::<f32>()
    }

    /// The share of `features` whose most probable label is `classes`'.
    pub fn accuracy(&self, features: &[&[f32]], classes: &[usize]) -> candle_core::Result<f64> {
        if features.is_empty() {
            return Ok(0.0);
        }
        let x = features_tensor(features)?;
        let predicted = self.logits(&x)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let right = predicted
            .iter()
            .zip(classes)
            .filter(|(p, c)| **p as usize == **c)
            .count();
        Ok(right as f64 / classes.len() as f64)
    }

    /// The head as tensors (`weight`, `bias`) for the package.
    pub fn tensors(&self) -> candle_core::Result<BTreeMap<String, FloatTensor>> {
        Ok(BTreeMap::from([
            ("weight".to_owned(), float_tensor(self.weight.as_tensor())?),
            ("bias".to_owned(), float_tensor(self.bias.as_tensor())?),
        ]))
    }

    /// A head from its package's tensors.
    pub fn from_tensors(tensors: &BTreeMap<String, FloatTensor>) -> candle_core::Result<Head> {
        let get = |name: &str| {
            let t = tensors
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("the head has no {name}")))?;
            Var::from_tensor(&Tensor::from_slice(
                &t.values,
                t.shape.as_slice(),
                &Device::Cpu,
            )?)
        };
        Ok(Head {
            weight: get("weight")?,
            bias: get("bias")?,
        })
    }
}

/// Trains a head on `features` (one vector per example) labelled `classes`: cross-
/// entropy, AdamW, warmup then cosine, seeded mini-batches. Answers the head and each
/// epoch's mean loss.
pub fn train(
    features: &[&[f32]],
    classes: &[usize],
    labels: usize,
    settings: HeadSettings,
) -> candle_core::Result<(Head, Vec<f64>)> {
    let dims = features.first().map_or(0, |f| f.len());
    let head = Head {
        weight: Var::zeros((labels, dims), DType::F32, &Device::Cpu)?,
        bias: Var::zeros(labels, DType::F32, &Device::Cpu)?,
    };
    let variables = vec![
        ("weight".to_owned(), &head.weight),
        ("bias".to_owned(), &head.bias),
    ];
    let mut optimizer = AdamW::new(AdamWConfig::default(), &variables)?;
    let batch = settings.batch_size.max(1);
    let steps_per_epoch = features.len().div_ceil(batch) as u64;
    let schedule = Schedule {
        peak: settings.learning_rate,
        warmup: (steps_per_epoch * settings.epochs / 20).max(1),
        total: steps_per_epoch * settings.epochs,
    };
    let mut losses = Vec::new();
    let mut step = 0;
    for epoch in 0..settings.epochs {
        let mut order: Vec<usize> = (0..features.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(settings.seed ^ epoch));
        let mut total = 0.0;
        for chunk in order.chunks(batch) {
            let x = features_tensor(&chunk.iter().map(|&i| features[i]).collect::<Vec<_>>())?;
            let y: Vec<u32> = chunk.iter().map(|&i| classes[i] as u32).collect();
            let y = Tensor::from_vec(y, (chunk.len(), 1), &Device::Cpu)?;
            let log_probs = candle_nn::ops::log_softmax(&head.logits(&x)?, D::Minus1)?;
            let loss = log_probs.gather(&y, 1)?.mean_all()?.neg()?;
            total += f64::from(loss.to_scalar::<f32>()?) * chunk.len() as f64;
            let store = loss.backward()?;
            let grads: BTreeMap<String, Tensor> = variables
                .iter()
                .filter_map(|(name, var)| {
                    store
                        .get(var.as_tensor())
                        .map(|g| (name.clone(), g.clone()))
                })
                .collect();
            optimizer.step(&variables, &grads, schedule.lr(step))?;
            step += 1;
        }
        losses.push(total / features.len() as f64);
    }
    Ok((head, losses))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

    use rand::Rng as _;

    use super::*;

    #[test]
    fn a_head_learns_separable_classes_and_the_loss_falls() {
        // Three clusters on the unit sphere of 16 dimensions, as embeddings are.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let centres: Vec<Vec<f32>> = (0..3)
            .map(|_| (0..16).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        let mut features = Vec::new();
        let mut classes = Vec::new();
        for i in 0..90 {
            let class = i % 3;
            let mut v: Vec<f32> = centres[class]
                .iter()
                .map(|c| c + rng.random_range(-0.3..0.3))
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            features.push(v);
            classes.push(class);
        }
        let (train_idx, held) = split(&classes, 3, 7);
        assert_eq!(held.len(), 18);
        let pick = |idx: &[usize]| -> (Vec<&[f32]>, Vec<usize>) {
            (
                idx.iter().map(|&i| features[i].as_slice()).collect(),
                idx.iter().map(|&i| classes[i]).collect(),
            )
        };
        let (x, y) = pick(&train_idx);
        let settings = HeadSettings {
            epochs: 30,
            batch_size: 16,
            learning_rate: 0.05,
            seed: 3,
        };
        let (head, losses) = train(&x, &y, 3, settings).unwrap();
        assert!(losses.last().unwrap() < &(losses[0] * 0.5), "{losses:?}");
        let (hx, hy) = pick(&held);
        assert!(head.accuracy(&hx, &hy).unwrap() > 0.95);
        let p = head.probabilities(&hx[..1]).unwrap();
        assert!((p[0].iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let again = Head::from_tensors(&head.tensors().unwrap()).unwrap();
        assert_eq!(
            again.accuracy(&hx, &hy).unwrap(),
            head.accuracy(&hx, &hy).unwrap()
        );
    }

    #[test]
    fn labelled_files_are_checked_line_by_line() {
        let line =
            |text: &str, label: &str| format!("{{\"text\": \"{text}\", \"label\": \"{label}\"}}\n");
        let mut good = String::new();
        for i in 0..6 {
            good.push_str(&line(&format!("formal {i}"), "formal"));
            good.push_str(&line(&format!("casual {i}"), "casual"));
        }
        let parsed = parse_file(&good).unwrap();
        assert_eq!(parsed.labels, ["casual", "formal"]);
        assert_eq!(parsed.classes[0], 1);
        let err = parse_file(&format!("{good}{{\"text\": \"x\"}}\n")).unwrap_err();
        assert!(err.to_string().starts_with("line 13:"), "{err}");
        let err = parse_file(&line("a", "only")).unwrap_err();
        assert!(err.to_string().contains("at least 10"), "{err}");
        let one_label: String = (0..10).map(|i| line(&format!("t{i}"), "x")).collect();
        assert!(
            parse_file(&one_label)
                .unwrap_err()
                .to_string()
                .contains("two labels")
        );
    }
}
