// moe_route and moe_route_ranked against the CPU's routing rule (crates/model/src/moe.rs, written
// again here): for every method (Default, Renormalize, RenormalizeNaive, Llama4, DeepSeekV3 with
// and without its group limit and correction bias), with the router's bias and the planted Zipf
// skew, and exact ties among the logits and among the group scores, the experts must be the same,
// best first, the weights within 1e-5, and the load must count the real tokens' choices only (the
// rows after them are a replayed graph's padding). The two kernels must agree bit for bit, since
// the launcher picks between them by the step's token count. Exits non-zero on any difference.
#include "emu.h"
#include "kernels.cu"
#include <numeric>

static std::vector<int> top_k(const std::vector<float>& z, int k) {
    std::vector<int> order(z.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return z[a] > z[b]; });
    order.resize(k);
    return order;
}
static float sigmoid(float z) { return 1.f / (1.f + expf(-z)); }

int main() {
    struct Case {
        int experts, k, method, n_group, topk_group;
        bool router_bias, zipf, correction;
    } cases[] = {
        {16, 4, 0, 1, 1, true, true, false},  {60, 4, 0, 1, 1, false, false, false}, {32, 4, 1, 1, 1, true, false, false},
        {128, 8, 2, 1, 1, false, true, false}, {64, 2, 3, 1, 1, false, false, false}, {16, 4, 4, 4, 2, false, false, true},
        {256, 8, 4, 8, 4, false, false, true}, {64, 6, 4, 1, 1, false, false, false}, {256, 8, 4, 8, 4, false, true, true},
        {20, 3, 4, 20, 3, false, false, true}, {64, 6, 4, 4, 4, false, false, true},   {512, 16, 2, 1, 1, true, true, false},
        {512, 16, 4, 32, 7, false, true, true},  {64, 6, 4, 8, 3, false, false, false}, {128, 8, 2, 1, 1, false, false, false},
    };
    Rng rng{777};
    int failures = 0;
    for (const Case& c : cases) {
        const int tokens = 21;
        u32 real_tokens = 17;
        std::vector<float> logits(tokens * c.experts), zipf(c.experts);
        std::vector<bf16> router_bias(c.experts), correction(c.experts);
        for (float& x : logits) x = 3.f * rng.next();
        // Token 0's two best logits tie; token 1's row repeats its first group (its first half with one
        // group), so that every group scores alike and each expert ties with its peers in the others.
        logits[5] = logits[6] = 10.f;
        const int repeat = c.n_group > 1 ? c.experts / c.n_group : c.experts / 2;
        for (int e = repeat; e < c.experts; e++) logits[c.experts + e] = logits[c.experts + e % repeat];
        for (int e = 0; e < c.experts; e++) {
            zipf[e] = -1.2f * logf(e + 1.f);
            router_bias[e] = f2bf(0.5f * rng.next());
            correction[e] = f2bf(0.1f * rng.next());
        }
        std::vector<u32> experts(tokens * c.k, 999), load(c.experts, 0), want_load(c.experts, 0);
        std::vector<float> weights(tokens * c.k, NAN);
        const float scale = c.method == 4 ? 2.5f : 1.f;
        // Both kernels take the same arguments; the grid differs (a warp a token, a block a token).
        const auto route = [&](auto kernel, unsigned blocks, std::vector<u32>& experts, std::vector<float>& weights, std::vector<u32>& load) {
            launch(kernel, {blocks}, 256, logits.data(), c.router_bias ? router_bias.data() : nullptr, c.zipf ? zipf.data() : nullptr,
                   c.correction ? correction.data() : nullptr, c.n_group, c.topk_group, tokens, c.experts, c.k, c.method, scale,
                   &real_tokens, experts.data(), weights.data(), load.data());
        };
        route(moe_route, (tokens + 7) / 8, experts, weights, load);
        std::vector<u32> ranked_experts(tokens * c.k, 999), ranked_load(c.experts, 0);
        std::vector<float> ranked_weights(tokens * c.k, NAN);
        route(moe_route_ranked, tokens, ranked_experts, ranked_weights, ranked_load);
        const bool alike = ranked_experts == experts && ranked_load == load &&
                           memcmp(ranked_weights.data(), weights.data(), weights.size() * sizeof(float)) == 0;
        int differ = 0;
        double weight_error = 0;
        for (int t = 0; t < tokens; t++) {
            std::vector<float> z(c.experts);
            for (int e = 0; e < c.experts; e++)
                z[e] = logits[t * c.experts + e] + ((c.router_bias ? bf2f(router_bias[e]) : 0.f) + (c.zipf ? zipf[e] : 0.f));
            std::vector<int> top;
            std::vector<float> want;
            if (c.method == 4) {
                std::vector<float> s(c.experts), choice(c.experts), candidates(c.experts, -INFINITY), group_score(c.n_group);
                for (int e = 0; e < c.experts; e++) {
                    s[e] = sigmoid(z[e]);
                    choice[e] = s[e] + (c.correction ? bf2f(correction[e]) : 0.f);
                }
                const int size = c.experts / c.n_group;
                for (int g = 0; g < c.n_group; g++) {
                    std::vector<float> group(choice.begin() + g * size, choice.begin() + (g + 1) * size);
                    for (int i : top_k(group, std::min(size, 2))) group_score[g] += group[i];
                }
                for (int g : top_k(group_score, c.topk_group))
                    for (int e = g * size; e < (g + 1) * size; e++) candidates[e] = choice[e];
                top = top_k(candidates, c.k);
                float sum = 0;
                for (int e : top) sum += s[e];
                for (int e : top) want.push_back(s[e] / sum);
            } else {
                top = top_k(z, c.k);
                const float high = *std::max_element(z.begin(), z.end());
                float total = 0, chosen = 0;
                for (float x : z) total += expf(x - high);
                for (int e : top) chosen += c.method == 1 ? expf(z[e] - z[top[0]]) : expf(z[e] - high) / total;
                for (int e : top) {
                    if (c.method == 0) want.push_back(expf(z[e] - high) / total);
                    if (c.method == 1) want.push_back(expf(z[e] - z[top[0]]) / chosen);
                    if (c.method == 2) want.push_back(expf(z[e] - high) / total / chosen);
                    if (c.method == 3) want.push_back(sigmoid(z[e]));
                }
            }
            for (int j = 0; j < c.k; j++) {
                differ += (int)experts[t * c.k + j] != top[j];
                weight_error = std::max(weight_error, (double)fabsf(weights[t * c.k + j] - want[j] * scale));
                if ((u32)t < real_tokens) want_load[top[j]]++;
            }
        }
        const bool ok = differ == 0 && weight_error < 1e-5 && load == want_load && alike;
        printf("%3d experts, top %2d, method %d, groups %2d keep %d: %d choices differ, weights within %.1e, load %s, ranked %s%s\n",
               c.experts, c.k, c.method, c.n_group, c.topk_group, differ, weight_error, load == want_load ? "equal" : "differs",
               alike ? "bit for bit alike" : "DIFFERS", ok ? "" : "  FAILED");
        failures += !ok;
    }
    return failures != 0;
}
