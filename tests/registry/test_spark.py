"""Batch inference past one machine: a registered variant's pyfunc as a Spark UDF (`mlflow.pyfunc.spark_udf`).

A local Spark (two executor threads, four partitions) runs the light served model over
500 prompts; every row is what `generate` gives for that prompt. Needs the `spark` extra
(pyspark) and a Java runtime, both of which `.ci/run` installs.
"""

import os
import sys

import pytest

pyspark = pytest.importorskip("pyspark", reason="the `spark` extra (pyspark) is not installed")

PROMPTS = [f"Prompt {number}: " + "more words " * (number % 7) for number in range(500)]
SETTINGS = {"max_new_tokens": 6}  # greedy: a row's tokens do not depend on the rows decoded beside it


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    # The workers run this interpreter: the one that has the model's requirements.
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2]").appName("gpt2reg-tests")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_udf_answers_every_row_as_generate_does(spark, imported_home, monkeypatch):
    import mlflow

    from registry import Registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{imported_home / 'mlflow.db'}")
    frame = spark.createDataFrame([(prompt,) for prompt in PROMPTS], ["prompt"]).repartition(4)
    assert frame.rdd.getNumPartitions() == 4
    generate = mlflow.pyfunc.spark_udf(spark, "models:/fx/1", result_type="string", env_manager="local",
                                       params=SETTINGS)
    rows = frame.withColumn("text", generate("prompt")).collect()
    answered = {row["prompt"]: row["text"] for row in rows}
    assert len(rows) == len(answered) == len(PROMPTS)

    expected = Registry(imported_home).run("generate", "fx", prompts=PROMPTS, **SETTINGS).output["outputs"]
    assert [answered[item["prompt"]] for item in expected] == [item["text"] for item in expected]
    assert len({item["text"] for item in expected}) > 10  # the prompts really got different answers
