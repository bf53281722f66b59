"""The app's "Evidence" tab: its function, and its /evidence endpoint through gradio_client."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from demo.analyses.evidence.view import NOT_MEASURED, faithfulness_result, sanity_result
from demo.app.inputs import InputError
from demo.app.pipeline import Pipeline, PipelineConfig
from demo.app.tabs_evidence import PREDICTED, evidence_for


@pytest.fixture(scope="module")
def pipeline(onnx_model):
    p = Pipeline(onnx_model, PipelineConfig(cache_size=2))
    yield p
    p.close()


@pytest.fixture
def cat_png(tmp_path):
    path = tmp_path / "cat.png"
    make_image("RGB", (40, 32), 3).save(path)
    return path


def test_evidence_shows_the_map_the_curves_and_the_sanity_verdict(pipeline, cat_png, tmp_path):
    png, summary = evidence_for(pipeline, str(cat_png), PREDICTED, "gradcam", sanity_csv=tmp_path / "none.csv",
                                faithfulness_csv=tmp_path / "none.csv", measured_model=None)
    assert np.asarray(Image.open(png)).ndim == 3
    assert "Deletion AUC" in summary and "insertion AUC" in summary and f"gradcam: {NOT_MEASURED}" in summary
    name = pipeline.model.class_names[3]
    table = tmp_path / "sanity.csv"
    table.write_text("method,check,spearman_abs\ngradcam,head random,0.12\nguided,head random,0.95\n")
    scores = tmp_path / "faithfulness.csv"
    scores.write_text(FAITHFULNESS_HEADER + "a.jpg,x,gradcam,0.1,0.7,0,0,0\na.jpg,x,random,0.2,0.3,0,0,0\n")
    _, summary = evidence_for(pipeline, str(cat_png), name, "gradcam", sanity_csv=table, faithfulness_csv=scores,
                              measured_model=pipeline.model.path)
    assert f"for **{name}**" in summary and "check head random, spearman_abs 0.12" in summary
    assert "0.95" not in summary and "deletion AUC 0.100 +- 0.000" in summary
    # results measured on another model file are not quoted for this one
    _, summary = evidence_for(pipeline, str(cat_png), name, "gradcam", sanity_csv=table, faithfulness_csv=scores,
                              measured_model=tmp_path / "other.onnx")
    assert "0.12" not in summary and "0.100" not in summary and summary.count(NOT_MEASURED) == 2


FAITHFULNESS_HEADER = "image,class,method,deletion_auc,insertion_auc,road_morf,road_lerf,seconds\n"


def test_faithfulness_result_pairs_each_image_with_the_random_map(tmp_path):
    table = tmp_path / "f.csv"
    table.write_text(FAITHFULNESS_HEADER + "a,x,ig,0.1,0.2,0,0,0\na,x,random,0.3,0.4,0,0,0\n"
                     "b,x,ig,0.5,0.9,0,0,0\nb,x,random,0.3,0.4,0,0,0\n")
    # deletion: 0.1 < 0.3 on a, 0.5 > 0.3 on b -> 1 of 2; insertion: 0.2 < 0.4 on a, 0.9 > 0.4 on b -> 1 of 2
    assert faithfulness_result("ig", table) == ("over 2 images, deletion AUC 0.300 +- 0.200, insertion AUC "
                                                "0.550 +- 0.350; beats the random map on 1 (deletion) and 1 "
                                                "(insertion) of 2")
    assert faithfulness_result("gradcam", table) == NOT_MEASURED
    assert faithfulness_result("ig", tmp_path / "missing.csv") == NOT_MEASURED


def test_sanity_result_reads_rule_columns_too(tmp_path):
    table = tmp_path / "s.csv"
    table.write_text("rule,verdict\ngradient,passes\n")
    assert sanity_result("gradient", table) == "verdict passes"
    assert sanity_result("ig", table) == NOT_MEASURED


@pytest.mark.parametrize("breed, method, words", [("Dragon", "gradcam", "Unknown class"),
                                                  (PREDICTED, "lrp", "Unknown method")])
def test_bad_choices_are_messages(pipeline, cat_png, breed, method, words):
    with pytest.raises(InputError, match=words):
        evidence_for(pipeline, str(cat_png), breed, method)


def test_evidence_endpoint(tiny_onnx, cat_png):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from test_app import new_client, picture, running_app

    with running_app(tiny_onnx) as (url, _, _):
        client = new_client(url)
        figure, summary = client.predict(handle_file(str(cat_png)), PREDICTED, "edges", "crop", api_name="/evidence")
        assert picture(figure).ndim == 3 and "**edges**" in summary
        with pytest.raises(AppError, match="Unknown method"):
            client.predict(handle_file(str(cat_png)), PREDICTED, "lrp", "crop", api_name="/evidence")
        with pytest.raises(AppError, match="Upload an image first"):
            client.predict(None, PREDICTED, "gradcam", "crop", api_name="/evidence")


def test_sanity_result_quotes_a_many_image_summary(tmp_path):
    table = tmp_path / "sanity_summary.csv"
    table.write_text("target,mode,step,randomized,method,metric,mean,sd,n\n"
                     "class,cascading,1,head,gradcam,spearman_abs,0.2,0.05,3\n"
                     "class,cascading,1,head,gradcam,ssim,0.9,0.05,3\n"
                     "class,cascading,2,head+conv5_3,gradcam,spearman_abs,0.1,0.01,3\n"
                     "conv5_3,cascading,2,head+conv5_3,gradcam,spearman_abs,0.7,0.01,3\n")
    (tmp_path / "sanity_classes_summary.csv").write_text("method,metric,mean,sd,n\ngradcam,spearman_abs,0.3,0.1,3\n")
    text = sanity_result("gradcam", table)
    assert "head random: 0.20 +- 0.05" in text and "head+conv5_3 random: 0.10 +- 0.01" in text
    assert "0.70" not in text and "0.90" not in text and "between classes 0.30" in text
