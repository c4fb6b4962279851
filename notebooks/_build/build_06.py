"""Build `notebooks/06_compare_runs.ipynb` (run: `.venv/bin/python notebooks/_build/build_06.py`).

The notebook is generated (nbformat), committed without outputs, and executed by papermill.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "06_compare_runs.ipynb"

PARAMETERS = """\
runs_dir: str = "../runs"  # folder holding the run folders (`flairlab run --runs-dir`)
pipeline: str = ""  # only runs of this pipeline ("" = every pipeline)
finetune_notebook: str = "04_finetune"  # notebook whose results are compared
metric: str = "test_miou"  # results.json key compared (higher is better)
pretrained: str = "pretrained"  # results key: fine-tuned from a pre-trained encoder or scratch
fraction: str = "label_fraction"  # share of labelled training patches (label efficiency)
fusion: str = "model.config.fusion_mode"  # results key: fusion mode of the fine-tuned encoder
contrastive: str = "contrastive_weight"  # pre-training parameter: 0 = MAE only
output_dir: str = "outputs/06_compare_runs"  # results.json and figures/
"""


def build() -> nbformat.NotebookNode:
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md("# 06 · Compare runs\n\n"
           "Every `flairlab run` leaves a folder in `runs/` with the parameters of each step "
           "(`params.json`), its `results.json` and the environment it ran in. This notebook "
           "reads them all and compares the fine-tuning results along four axes:\n\n"
           "1. **pre-trained vs from scratch**,\n"
           "2. **fusion modes** of the pre-trained encoder,\n"
           "3. **label efficiency**: score against the share of labelled patches,\n"
           "4. **MAE vs MAE + contrastive** pre-training.\n\n"
           "An axis appears once the runs differ along it — e.g. "
           "`flairlab run pipelines/sweep_label_efficiency.yaml`. Runs are never overwritten, so "
           "repeated runs of the same point show up as `n > 1` with a standard deviation."),
        code(PARAMETERS, metadata={"tags": ["parameters"]}),
        code("import matplotlib.pyplot as plt\n\n"
             "from flairlab import compare\n"
             "from flairlab.results import save_figure, save_results\n\n"
             "runs = compare.load_runs(runs_dir)\n"
             "if pipeline:\n"
             "    runs = runs[runs['pipeline'] == pipeline]\n"
             "for reason in runs.attrs.get('skipped', []):\n"
             "    print('skipped:', reason)\n"
             "overview = compare.run_overview(runs)\n"
             "print(f'{len(overview)} runs in {runs_dir}')\n"
             "overview.tail(20)"),
        md("## Fine-tuning results\n\nOne row per finished fine-tuning step; the pre-training "
           "settings of the same run sit next to it (`<step>.<parameter>` columns), and "
           "`pretraining` names how the encoder started (scratch, MAE, MAE + contrastive)."),
        code("ft = compare.finetune_table(runs, finetune_notebook, pretrained=pretrained,\n"
             "                            contrastive=contrastive)\n"
             "if ft.empty:\n"
             "    print(f'no finished {finetune_notebook} step in {runs_dir} yet')\n"
             "else:\n"
             "    fig = compare.plot_runs(ft, metric, label='pretraining')\n"
             "    save_figure(fig, output_dir, 'all_runs')\n"
             "    plt.show()\n"
             "compare.pick(ft, ['run', 'step', 'pretraining', fraction, fusion, metric])"),
        md("## 1 · Pre-trained vs from scratch"),
        code("by_pretrained = compare.compare_factor(\n"
             "    ft, pretrained, metric, title='pre-trained vs scratch',\n"
             "    output_dir=output_dir, name='pretrained_vs_scratch')\n"
             "by_pretrained"),
        md("## 2 · Fusion modes (pre-trained encoders only)"),
        code("by_fusion = compare.compare_factor(\n"
             "    compare.only_true(ft, pretrained), fusion, metric, title='fusion modes',\n"
             "    output_dir=output_dir, name='fusion_modes')\n"
             "by_fusion"),
        md("## 3 · Label efficiency\n\nMean score per share of labelled training patches, one "
           "curve for pre-trained and one for scratch encoders: pre-training should pay off most "
           "where labels are scarce."),
        code("curves = compare.compare_label_efficiency(ft, metric, fraction, by=pretrained,\n"
             "                                          output_dir=output_dir)\n"
             "curves"),
        md("## 4 · MAE vs MAE + contrastive pre-training"),
        code("by_method = compare.compare_factor(\n"
             "    compare.only_true(ft, pretrained), 'pretraining', metric,\n"
             "    title='pre-training objective', output_dir=output_dir,\n"
             "    name='mae_vs_contrastive')\n"
             "by_method"),
        code("save_results(output_dir, {\n"
             "    'n_runs': len(overview),\n"
             "    'n_finetune_results': len(ft),\n"
             "    'metric': metric,\n"
             "    'pretrained_vs_scratch': compare.records(by_pretrained),\n"
             "    'fusion_modes': compare.records(by_fusion),\n"
             "    'label_efficiency': compare.records(curves),\n"
             "    'mae_vs_contrastive': compare.records(by_method),\n"
             "})"),
    ]  # fmt: skip
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    nbformat.write(build(), OUT)
    print(OUT)
