"""The sections of one run in the report: its configuration and training, and its diagnostics.

Each ``*_section`` function adds its paragraphs, tables and figures to the page and returns the
machine-readable findings of what it showed.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxface import evaluation
from jaxface.eval import latent_bias as bias_lib
from jaxface.eval.formatting import frac_pct
from jaxface.report import figures as fig_lib
from jaxface.report import figures_latent
from jaxface.report import findings as fnd
from jaxface.report import page as page_lib
from jaxface.report.findings import RunArtifacts


def _finite(x: float) -> float | None:
  return float(x) if np.isfinite(x) else None


def training_section(page: page_lib.Page, run: RunArtifacts, slug: str,
                     order: Sequence[str]) -> dict:
  """Adds the run's configuration, training curves and sampling mass; returns their findings."""
  out = page.out_dir
  found: dict[str, Any] = {}
  if run.config is not None:
    seed = run.config.get("seed")
    found["seed"] = seed
    recon = (f", reconstruction loss {fnd.RECON_LABELS.get(run.recon, run.recon)}"
             if run.kind != "cnn" else "")
    page.raw(page_lib.config_details(
        run.config, f"Configuration of {run.name} (seed {seed}, dtype {run.dtype}{recon}): "
        "click to show"))
  curves = fnd.training_curves(run.log or [])
  if curves is not None:
    path = fig_lib.plot_training_curves({run.name: curves}, out / f"{slug}_training.png")
    val = ", ".join(f"epoch {int(e)} {100 * v:.1f}%" for e, v in
                    zip(curves.epoch, curves.val_accuracy))
    page.figure(path, f"{run.name}: training loss (left; the total and its terms, each the mean "
                "over a logging window of metrics.jsonl) and accuracy (right; thin: training "
                "batches, which a resampling run draws with its sampling weights; dots: the "
                f"validation set at each epoch end). Validation accuracy: {val or 'not logged'}.",
                run.name)
    found["training"] = {"step": curves.step, "loss": curves.loss,
                         "loss_names": curves.loss_names, "accuracy": curves.accuracy,
                         "epoch": curves.epoch, "val_accuracy": curves.val_accuracy}
  mass = fnd.sampling_mass(run.resampling or [], order)
  if mass is not None:
    _sampling_mass(page, run, mass, slug)
    found["sampling_mass"] = mass._asdict()
  return found


def _sampling_mass(page: page_lib.Page, run: RunArtifacts, mass: fnd.SamplingMass,
                   slug: str) -> None:
  """The figure and table of a resampling run's sampling mass per group over epochs."""
  path = fig_lib.plot_sampling_mass(mass, page.out_dir / f"{slug}_sampling_mass.png")
  first, last = mass.mass[0], mass.mass[-1]
  change = ", ".join(f"{g} {100 * a:.1f}% → {100 * b:.1f}%"
                     for g, a, b in zip(mass.groups, first, last))
  page.figure(path, f"{run.name}: the share of the training sampling mass on each group's "
              f"faces, from the probabilities set at the start of every epoch (log scale); "
              f"the dashed lines are each group's share of the training faces, the mass "
              f"uniform sampling would give. First to last epoch: {change}.", run.name)
  header = ["epoch", *(f"{g} mass %" for g in mass.groups), "effective sample size %"]
  rows = [[int(epoch), *(f"{100 * v:.2f}" for v in row), frac_pct(_finite(ess), 1)]
          for epoch, row, ess in zip(mass.epochs, mass.mass, mass.ess_fraction)]
  if np.isfinite(mass.share).any():
    rows.append(["share of the training faces",
                 *(frac_pct(_finite(share), 2) for share in mass.share), "–"])
  page.raw(page_lib.table(header, rows))


class _Faces(NamedTuple):
  """A run's test faces and what the diagnostics show of them."""
  run: RunArtifacts
  images: np.ndarray  # (F, H, W, 3)
  groups: np.ndarray  # (F,)
  pred: evaluation.Predictions  # of the F faces
  scores: dict  # risk score name -> (F,) or None
  order: list[str]
  n_show: int
  slug: str
  dtype: Any


def diagnostics_section(page: page_lib.Page, run: RunArtifacts, result: dict, slug: str,
                        order: list[str], n_grid: int) -> dict:
  """Adds one run's diagnostic figures to the page; returns its machine-readable findings."""
  import jax.numpy as jnp
  faces = result["faces"]
  if not len(faces):
    page.para("The test set has no faces: no diagnostics.")
    return {}
  f = _Faces(run, run.images[faces], np.asarray(run.groups)[faces], result["face_pred"],
             result["scores"], order, min(n_grid, len(faces)), slug, jnp.dtype(run.dtype))
  found: dict[str, Any] = {}
  if result["vae"]:
    found["reconstruction"] = _reconstruction(page, f)
    found.update(_traversal(page, f))
    found["accuracy_vs_latent"] = _accuracy_vs_latent(page, f)
  found["latent_bias"] = latent_bias_section(page, f, result)
  found["scores_by_group"] = _faces_by_score(page, f, result["reference"])
  _scores_by_group(page, f, found["scores_by_group"])
  if result["vae"]:
    found["deciles"] = _deciles(page, f)
    _percentile_faces(page, f)
  return found


def _reconstruction(page: page_lib.Page, f: _Faces) -> dict:
  """What the VAE finds easy and hard to reproduce."""
  run, pred, groups, comp = f.run, f.pred, f.groups, fnd.composition
  recon_label = fnd.RECON_LABELS.get(run.recon, run.recon)
  order_err = np.argsort(pred.recon_error, kind="stable")
  low, high = order_err[:f.n_show], order_err[::-1][:f.n_show]
  both = np.concatenate([low, high])
  recon = evaluation.reconstruct(run.variables, f.images[both], run.batch_size, dtype=f.dtype)
  decimals = fnd.distinct_decimals(pred.recon_error[both], 3, 6)
  path = fig_lib.plot_face_panels([
      {"title": "Lowest reconstruction loss (each face above its reconstruction)",
       "images": f.images[low], "recon": recon[:f.n_show],
       "captions": fnd.face_captions(groups[low], pred.recon_error[low], decimals,
                                     f"{recon_label} ")},
      {"title": "Highest reconstruction loss", "images": f.images[high],
       "recon": recon[f.n_show:],
       "captions": fnd.face_captions(groups[high], pred.recon_error[high], decimals,
                                     f"{recon_label} ")},
  ], page.out_dir / f"{f.slug}_reconstruction.png", f"{run.name}: test faces by reconstruction "
     "loss")
  page.figure(path, f"{run.name}: the {f.n_show} test faces the VAE reconstructs best (top) and "
              f"worst (bottom), each above its reconstruction from the latent mean, with "
              f"group and {recon_label} loss (the run's reconstruction loss, also its "
              f"epistemic score). Best: {comp(groups[low], f.order)}. Worst: "
              f"{comp(groups[high], f.order)}. Faces reconstructed badly are ones the latent "
              "space represents poorly; the pixel error also grows with image contrast, so "
              "dark, low-contrast faces can be easy to reproduce pixel by pixel.", run.name)
  return {"kind": run.recon,
          "lowest_groups": dict(collections.Counter(groups[low].tolist())),
          "highest_groups": dict(collections.Counter(groups[high].tolist())),
          "mean_by_group": {g: float(pred.recon_error[groups == g].mean())
                            for g in f.order if np.any(groups == g)}}


def _traversal(page: page_lib.Page, f: _Faces) -> dict:
  """Latent traversals of the highest-variance dimensions."""
  run, z_mean = f.run, f.pred.z_mean
  traversal = evaluation.latent_traversal(run.variables, z_mean, n_dims=5, dtype=f.dtype)
  path = fig_lib.plot_latent_traversal(z_mean, traversal,
                                       page.out_dir / f"{f.slug}_latent_traversal.png")
  variances = np.var(np.asarray(z_mean, np.float64), axis=0)
  top_share = float(variances[traversal.dims].sum() / max(variances.sum(), 1e-30))
  change = fnd.traversal_change(traversal)
  change_text = ", ".join(f"z[{int(d)}] {c:.3f}" for d, c in zip(traversal.dims, change))
  page.figure(path, f"{run.name}: the {len(traversal.dims)} latent dimensions with the largest "
              "variance of the latent mean over the test faces (together "
              f"{100 * top_share:.0f}% of the total variance of the "
              f"{z_mean.shape[1]} dimensions). Above each strip: the histogram of that "
              "dimension over the test faces; below: the mean latent code of the test faces "
              "decoded with only that dimension changed, to the value on the axis, evenly "
              "spaced over its observed range. Mean absolute pixel difference between the "
              f"first and last image of each strip (0-1 scale): {change_text}; a small value "
              "means that dimension alone barely changes the decoded face.", run.name)
  return {"traversal_dims": traversal.dims, "traversal_change": change,
          "traversal_variance_share": top_share}


def _accuracy_vs_latent(page: page_lib.Page, f: _Faces) -> dict:
  """Accuracy against latent density."""
  curve = evaluation.accuracy_vs_latent(f.pred.z_mean, f.pred.face_prob)
  band_low, band_high = fnd.latent_accuracy_band(curve)
  path = fig_lib.plot_latent_accuracy(curve, page.out_dir / f"{f.slug}_accuracy_vs_latent.png")
  mid = curve.mean_curve[len(curve.mean_curve) // 2 - 1:len(curve.mean_curve) // 2 + 1]
  ends = curve.mean_curve[[0, -1]]
  page.figure(path, f"{f.run.name}: mean face probability of the test faces per bin of each "
              "latent dimension (5th to 95th percentile of the dimension, 10 bins). Red line: "
              f"the mean over the {curve.per_dim.shape[0]} dimensions; shaded: the 10th to "
              "90th percentile of the single-dimension curves in each bin; grey bars: share of "
              "faces per bin, i.e. the latent density. Mean over the two central bins "
              f"{np.nanmean(mid):.3f}, over the two outer bins {np.nanmean(ends):.3f}: a curve "
              "that drops towards the rare outer bins means faces with uncommon latent "
              "values are detected less reliably.", f.run.name)
  return {"mean_curve": curve.mean_curve, "band_low": band_low, "band_high": band_high,
          "share": curve.share}


def _latent_bias_faces(f: _Faces, result: dict) -> tuple[tuple | None, list[str]]:
  """The faces of the latent-bias section and why others were passed over.

  The training faces (those resampling weighs) where they carry enough labelled faces of each
  skin tone, else the test faces.

  Returns:
    ``((which, z_mean (N, k), face_prob (N,), groups (N,)) or None, ['which: reason', ...])``.
  """
  ref = result.get("reference_pred")
  candidates = [("test faces", f.pred.z_mean, f.pred.face_prob, f.groups)]
  if ref is not None and f.run.reference_groups is not None:
    candidates.insert(0, ("training faces", ref.z_mean, ref.face_prob,
                          np.asarray(f.run.reference_groups)))
  reasons = []
  for candidate in candidates:
    reason = bias_lib.skip_reason(*bias_lib.skin_tone(candidate[3]), candidate[1])
    if reason is None:
      return candidate, reasons
    reasons.append(f"{candidate[0]}: {reason}")
  return None, reasons


def _latent_bias_text(found: bias_lib.LatentBias, which: str, run_mass: float | None) -> str:
  """Two or three sentences of what the latent-bias figure shows, from its numbers."""
  best_dim, best_axis = int(np.argmax(found.dim_auc)), int(np.argmax(found.axis_auc))
  dim_auc, axis_auc = found.dim_auc[best_dim], found.axis_auc[best_axis]
  strength = ("separated" if found.probe_auc >= 0.8 else
              "weakly separated" if found.probe_auc >= 0.6 else "not separated")
  text = (f"On the {which} ({found.n_darker} darker, {found.n_lighter} lighter), skin tone is "
          f"{strength} by a direction (linear probe AUC {found.probe_auc:.2f} on held-out "
          "faces)")
  if found.probe_auc >= 0.8 and found.probe_auc >= dim_auc + 0.1:
    text += f" but by no single latent dimension better than {dim_auc:.2f} (z[{best_dim}]); "
  else:
    text += f"; the best single latent dimension, z[{best_dim}], reaches {dim_auc:.2f}; "
  text += (f"the best principal axis, axis {best_axis + 1} "
           f"({100 * found.axis_variance_share[best_axis]:.1f}% of the variance), reaches "
           f"{axis_auc:.2f}.")
  if np.isfinite(found.error_axis_auc):
    side = "further towards" if found.error_axis_auc > 0.5 else "no further towards"
    text += (f" Along the error axis the darker faces lie {side} the classifier's errors than "
             f"the lighter ones (AUC {found.error_axis_auc:.2f}).")
  text += (f" The darker faces are {100 * found.darker_share:.1f}% of these faces and get "
           f"{100 * found.darker_mass_latent:.1f}% of the mass of density resampling over the "
           "latent dimensions")
  if np.isfinite(found.darker_mass_error_axis):
    text += f", {100 * found.darker_mass_error_axis:.1f}% along the error axis"
  if run_mass is not None:
    text += (f"; the run's own resampling signal gave the darker training faces "
             f"{100 * run_mass:.1f}% of its mass in its last epoch")
  return text + "."


def _latent_bias_table(found: bias_lib.LatentBias, n_rows: int = 5) -> str:
  """The principal axes that separate the skin tones best, then the probe and the error axis."""
  rows = []
  for a in np.argsort(-found.axis_auc, kind="stable")[:n_rows]:
    loading = found.axis_direction[a]
    top = np.argsort(-np.abs(loading), kind="stable")[:3]
    rows.append([f"principal axis {a + 1}", f"{100 * found.axis_variance_share[a]:.1f}",
                 f"{found.axis_auc[a]:.3f}",
                 ", ".join(f"z[{int(d)}] {loading[d]:+.2f}" for d in top)])
  best_dim = int(np.argmax(found.dim_auc))
  rows += [[f"latent dimension z[{best_dim}] (the best)", "–", f"{found.dim_auc[best_dim]:.3f}",
            "–"],
           ["linear probe (held-out half)", "–", f"{found.probe_auc:.3f}", "–"],
           ["error axis (darker towards the errors)", "–", fnd.format_fixed(
               found.error_axis_auc, 3) if np.isfinite(found.error_axis_auc) else "–", "–"]]
  return page_lib.table(["direction", "variance explained %", "AUC darker vs lighter",
                         "largest loadings (darker side +)"], rows)


def latent_bias_section(page: page_lib.Page, f: _Faces, result: dict) -> dict:
  """Where skin tone lives in the run's latent space (:mod:`jaxface.eval.latent_bias`).

  Shown for a VAE whose faces carry groups of both skin tones; otherwise a line says why not.
  Returns the section's findings, or ``{'skipped': reason}``.
  """
  page.heading("Where the bias lives in the latent", 3)
  chosen, reasons = (_latent_bias_faces(f, result) if result["vae"] else
                     (None, ["the standard CNN has no latent space"]))
  if chosen is None:
    reason = "; ".join(reasons)
    page.para(f"Not shown: {reason}.")
    return {"skipped": reason}
  which, z_mean, face_prob, groups = chosen
  note = f" Not on the {'; '.join(reasons)}." if reasons else ""
  darker, known = bias_lib.skin_tone(groups)
  z_mean, face_prob, darker = z_mean[known], face_prob[known], darker[known]
  alpha = float(((f.run.config or {}).get("resampling") or {}).get("alpha", 1e-3))
  found = bias_lib.latent_bias(z_mean, face_prob, darker, bins=f.run.bins, alpha=alpha)
  records = [r for r in f.run.resampling or () if r.get("mass_by_group")]
  run_mass = bias_lib.darker_mass(records[-1]["mass_by_group"]) if records else None
  text = _latent_bias_text(found, which, run_mass)
  name, slug = f.run.name, f.slug
  path = figures_latent.plot_latent_bias(found, page.out_dir / f"{slug}_latent_bias.png",
                                         f"{name}: darker vs lighter {which} in the latent space")
  page.figure(path, f"{name}: how well each direction of the latent space separates the "
              f"darker from the lighter {which} (the group names' first letter, read for this "
              "figure only), as the ROC AUC of the faces' coordinates (0.5: not at all, 1: "
              "fully). Left: the principal axes of the active dimensions with the share of the "
              "variance each explains; right: every latent dimension, sorted. Dashed: a "
              "least-squares probe on the whitened codes, fitted on half the faces and scored on "
              "the other half; dotted: the direction that predicts the classifier's loss on "
              f"these faces.{note} {text}", name)
  page.raw(_latent_bias_table(found))
  best = int(np.argmax(found.axis_auc))
  traversal = bias_lib.axis_traversal(f.run.variables, z_mean, found.axis_direction[best],
                                      float(found.axis_std[best]), best, dtype=f.dtype)
  projection = (z_mean - z_mean.mean(axis=0)) @ found.axis_direction[best]
  path = figures_latent.plot_axis_traversal(
      projection, darker, traversal, page.out_dir / f"{slug}_latent_bias_traversal.png",
      f"{name}: decoded mean face along principal axis {best + 1}")
  page.figure(path, f"{name}: the mean latent code of the {which} decoded after moving it along "
              f"principal axis {best + 1}, the one that separates the skin tones best (AUC "
              f"{found.axis_auc[best]:.2f}), from -2 to 2 standard deviations of the faces; "
              "above, the density of the darker and of the lighter faces along that axis.", name)
  return {"faces": which, "passed_over": reasons, "best_axis": best, "best_dim": int(np.argmax(found.dim_auc)),
          "darker_mass_run": run_mass, "text": text,
          **{k: v for k, v in found._asdict().items() if k != "axis_direction"}}


def _faces_by_score(page: page_lib.Page, f: _Faces, reference: bool) -> dict:
  """The faces each risk score ranks lowest and highest; returns the mean score per group."""
  run, groups, comp = f.run, f.groups, fnd.composition
  by_group = {}
  for name, values in f.scores.items():
    if values is None:
      continue
    label, meaning = fnd.SCORE_TEXT[name]
    rank = np.argsort(values, kind="stable")
    low, high = rank[:f.n_show], rank[::-1][:f.n_show]
    # Enough decimals that different scores read differently (the entropy of a near-chance
    # classifier differs only in the fifth decimal).
    decimals = fnd.distinct_decimals(values[np.concatenate([low, high])],
                                     2 if name == "bias" else 3, 6)
    path = fig_lib.plot_face_panels([
        {"title": f"Lowest {label}", "images": f.images[low],
         "captions": fnd.face_captions(groups[low], values[low], decimals)},
        {"title": f"Highest {label}", "images": f.images[high],
         "captions": fnd.face_captions(groups[high], values[high], decimals)},
    ], page.out_dir / f"{f.slug}_faces_{name}.png", f"{run.name}: test faces by {label} "
       f"({meaning})")
    extra = ""
    if name == "bias":
      extra = (" The density is estimated on training faces, so low means rare in training."
               if reference else " The density is estimated on the test faces.")
    elif name == "epistemic":
      extra = (f" The score is the {fnd.RECON_LABELS.get(run.recon, run.recon)} reconstruction "
               "error.")
    page.figure(path, f"{run.name}: the {f.n_show} test faces with the lowest (top) and highest "
                f"(bottom) {label} ({meaning}), with group and score.{extra} Lowest: "
                f"{comp(groups[low], f.order)}. Highest: {comp(groups[high], f.order)}.",
                run.name)
    by_group[name] = {g: float(np.mean(values[groups == g]))
                      for g in f.order if np.any(groups == g)}
  return by_group


def _scores_by_group(page: page_lib.Page, f: _Faces, by_score: dict) -> None:
  """The distribution of each risk score per group."""
  present = [g for g in f.order if np.any(f.groups == g)]
  if not present:
    return
  path = fig_lib.plot_score_by_group(f.scores, f.groups, present,
                                     page.out_dir / f"{f.slug}_scores_by_group.png")
  parts = []
  for name, by_group in by_score.items():
    pick = min if name == "bias" else max
    worst = pick(by_group, key=by_group.get)
    parts.append(f"{fnd.SCORE_TEXT[name][0]}: {'lowest' if name == 'bias' else 'highest'} "
                 f"mean in {worst} ({by_group[worst]:.3g})")
  page.figure(path, f"{f.run.name}: distribution of each risk score per group over the test "
              "faces (boxes: quartiles, whiskers: 1.5 IQR, diamonds: means). "
              + "; ".join(parts) + ".", f.run.name)


def _deciles(page: page_lib.Page, f: _Faces) -> dict:
  """Detection rate per decile of the bias and epistemic scores."""
  rates = {name: evaluation.rate_by_quantile(f.scores[name], f.pred.face_prob)
           for name in ("bias", "epistemic")}
  path = fig_lib.plot_quantile_rates(rates, page.out_dir / f"{f.slug}_deciles.png")
  b, e = rates["bias"].rate, rates["epistemic"].rate
  page.figure(path, f"{f.run.name}: detection rate of the test faces per decile of the bias "
              f"score (left, decile 1 = rarest) and of the epistemic score (right, decile 10 = "
              f"worst reconstructed). Rarest decile {100 * b[0]:.1f}% vs most common "
              f"{100 * b[-1]:.1f}%; best reconstructed decile {100 * e[0]:.1f}% vs worst "
              f"{100 * e[-1]:.1f}%. A model that is biased against rare faces shows rates "
              "rising with the bias score and falling with the epistemic score.", f.run.name)
  return {k: q._asdict() for k, q in rates.items()}


def _percentile_faces(page: page_lib.Page, f: _Faces) -> None:
  """The average face per percentile band of the bias and epistemic scores."""
  rows = {name: evaluation.percentile_faces(f.images, f.scores[name])
          for name in ("bias", "epistemic")}
  path = fig_lib.plot_percentile_faces(rows, page.out_dir / f"{f.slug}_percentile_faces.png")
  page.figure(path, f"{f.run.name}: the pixel-wise average of the test faces in each 10% band "
              "of the bias score (top; left = rarest) and of the epistemic score (bottom; right "
              "= worst reconstructed). A change in brightness or colour along a row shows "
              "what the faces the score ranks low and high have in common on average.",
              f.run.name)
