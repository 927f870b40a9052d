// What `eval` measures, per scored token and over the text. Pure functions of the logits (no llama.cpp),
// in double.
//
// A chunk of n tokens gives n − 1 scored positions: the logits at position j predict token j + 1 (every
// position is scored, including the first ones of a chunk with little context; llama-perplexity scores
// only the second half of each chunk, so its figures are not directly comparable).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace pptq_llama {

/// log softmax(x), in double.
inline std::vector<double> log_softmax(const float* x, std::size_t n) {
  double m = -INFINITY;
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  double s = 0;
  for (std::size_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - m);
  const double lse = m + std::log(s);
  std::vector<double> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<double>(x[i]) - lse;
  return out;
}

/// The first index of the largest entry.
inline std::size_t argmax(const float* x, std::size_t n) {
  return static_cast<std::size_t>(std::max_element(x, x + n) - x);
}

/// One scored position: the negative log-likelihoods of the next token under both models,
/// KL(reference ‖ quantized) = Σ p_ref (log p_ref − log p_q), and whether the most likely tokens agree.
struct TokenScore {
  double nll_ref = 0, nll_q = 0, kl = 0;
  bool agree = false;
};

inline TokenScore score_token(const float* ref, const float* q, std::size_t n_vocab, std::size_t next) {
  const std::vector<double> lr = log_softmax(ref, n_vocab);
  const std::vector<double> lq = log_softmax(q, n_vocab);
  TokenScore s;
  s.nll_ref = -lr[next];
  s.nll_q = -lq[next];
  double kl = 0;
  for (std::size_t i = 0; i < n_vocab; ++i) kl += std::exp(lr[i]) * (lr[i] - lq[i]);
  s.kl = std::max(kl, 0.0);  // ≥ 0 in exact arithmetic; rounding can leave −1e-17
  s.agree = argmax(ref, n_vocab) == argmax(q, n_vocab);
  return s;
}

/// The p-quantile (0 < p ≤ 1) by the nearest rank: the smallest value with at least p·n values ≤ it.
inline double nearest_rank(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(v.size())));
  return v[std::min(v.size(), std::max<std::size_t>(rank, 1)) - 1];
}

/// The figures over the text.
struct EvalSummary {
  std::size_t scored = 0;
  double ppl_ref = 0, ppl_q = 0;   ///< exp(mean NLL)
  double kl_mean = 0, kl_p99 = 0, kl_median = 0, kl_max = 0;
  double top1 = 0;  ///< fraction of positions whose most likely tokens agree
};

inline EvalSummary summarize(const std::vector<TokenScore>& s) {
  EvalSummary out;
  out.scored = s.size();
  if (s.empty()) return out;
  double nr = 0, nq = 0, kl = 0;
  std::size_t agree = 0;
  std::vector<double> kls;
  kls.reserve(s.size());
  for (const TokenScore& t : s) {
    nr += t.nll_ref;
    nq += t.nll_q;
    kl += t.kl;
    agree += t.agree ? 1 : 0;
    kls.push_back(t.kl);
  }
  const double n = static_cast<double>(s.size());
  out.ppl_ref = std::exp(nr / n);
  out.ppl_q = std::exp(nq / n);
  out.kl_mean = kl / n;
  out.kl_p99 = nearest_rank(kls, 0.99);
  out.kl_median = nearest_rank(kls, 0.5);
  out.kl_max = *std::max_element(kls.begin(), kls.end());
  out.top1 = static_cast<double>(agree) / n;
  return out;
}

}  // namespace pptq_llama
