"""Triton python model `feature_cache`: delegates to videoneva.serving.triton_glue.FeatureCacheModel."""
import json
import site
import sys


class TritonPythonModel:
    def initialize(self, args):
        # the stub's interpreter does not read PYTHONPATH: put the serving venv on sys.path
        params = json.loads(args["model_config"]).get("parameters", {})
        for p in json.loads(params["python_path"]["string_value"]):
            if p not in sys.path:
                sys.path.insert(0, p)
                site.addsitedir(p)
        from videoneva.serving.triton_glue import FeatureCacheModel

        self.model = FeatureCacheModel(args)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        getattr(self.model, "finalize", lambda: None)()
