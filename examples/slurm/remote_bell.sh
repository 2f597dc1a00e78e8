#!/bin/bash
# A job a centre submits to the QPU site's Slurm through slurmrestd, using a QPU
# session the centre opened at the site's broker for one of its users:
#
#   export SLURM_JWT=...     # from the QPU site: scontrol token username=north-gw
#   export QHPC_TOKEN=...    # the centre's broker token (role centre), stays here
#   qhpc slurm submit examples/slurm/remote_bell.sh --remote http://qpu-site:6820 \
#       --user north-gw -p qpu --broker http://qpu-site:8080 --qpu aer \
#       --fastpath tcp://qpu-site:5555 --for-user alice --broker-account north-chem \
#       --env PY=/opt/qhpc/bin/python --wait
#
# The job sees QHPC_URL, QHPC_FASTPATH, QHPC_RESOURCE and QHPC_SESSION (a token for
# this one session), never the centre's token; the broker books the usage to
# user alice of centre north.
"${PY:-python3}" - <<'PYTHON'
from qiskit import QuantumCircuit
from qhpc.session import QPU

bell = QuantumCircuit(2)
bell.h(0)
bell.cx(0, 1)
bell.measure_all()
qpu = QPU.from_env()
print("counts", qpu.run(bell, shots=1000))
qpu.close()
PYTHON
