"""Each package imports on its own, without pulling in another domain package."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

DOMAINS = ["hairseg", "foodrec", "plantid", "roofseg", "videogen"]
PACKAGES = ["mlcore"] + [d for d in DOMAINS if importlib.util.find_spec(d) is not None]
# the command modules too, since package __init__ files import lazily
MODULES = {
    "mlcore": ["mlcore", "mlcore.trainer", "mlcore.download", "mlcore.datacli", "mlcore.cli", "mlcore.testing"],
    "hairseg": ["hairseg", "hairseg.train", "hairseg.eval", "hairseg.export", "hairseg.predict",
                "hairseg.datasets", "hairseg.inference", "hairseg.baseline"],
    "foodrec": ["foodrec", "foodrec.train", "foodrec.eval", "foodrec.predict", "foodrec.export", "foodrec.datasets"],
    "plantid": ["plantid", "plantid.train", "plantid.eval", "plantid.predict", "plantid.export", "plantid.datasets"],
    "roofseg": ["roofseg", "roofseg.train", "roofseg.eval", "roofseg.predict", "roofseg.agreement",
                "roofseg.datasets"],
    "videogen": ["videogen", "videogen.train", "videogen.eval", "videogen.predict"],
}


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_alone(package):
    modules = MODULES.get(package, [package])
    code = (f"import sys, json; [__import__(m) for m in {modules!r}]; "
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({DOMAINS!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert loaded <= {package}, f"{package} imported other domain packages: {loaded - {package}}"


def test_every_domain_is_installed():
    assert PACKAGES == ["mlcore", *DOMAINS]
