"""Objectives written as the nested sums of METHODS.md, one scalar at a time: the tests' independent formulations."""
import math


def brute_fastclip(img, txt, tau, eps, rho):
    """FastCLIP's objective as the nested sums of METHODS.md, one scalar at a time."""
    b = img.shape[0]
    sim = (img @ txt.T).tolist()
    total = 0.0
    for i in range(b):
        g_img = sum(math.exp((sim[i][j] - sim[i][i]) / tau) for j in range(b) if j != i) / (b - 1)
        g_txt = sum(math.exp((sim[j][i] - sim[i][i]) / tau) for j in range(b) if j != i) / (b - 1)
        total += math.log(eps + g_img) + math.log(eps + g_txt)
    return tau * total / b + 2 * rho * tau
