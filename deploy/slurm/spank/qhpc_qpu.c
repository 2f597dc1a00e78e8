/*
 * qhpc_qpu: the `--qpu=NAME[,NAME]` option of sbatch, salloc and srun.
 *
 * plugstack.conf line:  required /usr/local/lib/qhpc/qhpc_qpu.so allowed=sim,emu
 *
 * - Names outside `allowed=` are refused when the option is parsed, so sbatch refuses the
 *   job at submit time with a message naming the bad name and the allowed ones. Without
 *   `allowed=` any name made of letters, digits, '_', '-' and '.' passes.
 * - The choice (comma-separated, as given) reaches
 *     Prolog, Epilog, PrologSlurmctld, EpilogSlurmctld  as SPANK_SLURM_JOB_QPU
 *     the job's tasks (batch script, srun steps)         as SLURM_JOB_QPU
 * - SPANK cannot change the job's licences. deploy/slurm/cli_filter.lua, when enabled
 *   (CliFilterPlugins=cli_filter/lua), turns `--qpu=NAME` into `-L qpu_NAME:1`; without
 *   it users give `-L qpu_NAME` as well.
 *
 * Slurm 22.05 ignores a static spank_options[] table in sbatch/salloc, so the option is
 * registered from slurm_spank_init in every context: the remote side (slurmstepd) only
 * receives the value of options it has registered itself.
 * Built by `scripts/slurm.sh build-spank` (gcc -shared -fPIC, headers from libslurm-dev).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <slurm/spank.h>

SPANK_PLUGIN(qhpc_qpu, 1);

#define LIST_MAX 512
#define ENV_NAME "SLURM_JOB_QPU"

static char allowed[LIST_MAX];  /* comma-separated; empty: any well-formed name */
static char chosen[LIST_MAX];   /* the value of --qpu as given; empty: not given */
static char usage[LIST_MAX + 64];

static int check_qpu(int val, const char *optarg, int remote);

static struct spank_option qpu_option = {
	"qpu", "NAME[,NAME]", usage, 1, 0, check_qpu,
};

static int well_formed(const char *name, size_t len)
{
	size_t i;

	if (len == 0)
		return 0;
	for (i = 0; i < len; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
			return 0;
	}
	return 1;
}

/* True when NAME (LEN bytes, not terminated) is one of the allowed names. */
static int is_allowed(const char *name, size_t len)
{
	const char *item = allowed;

	if (allowed[0] == '\0')
		return 1;
	while (*item) {
		size_t item_len = strcspn(item, ",");
		if (item_len == len && strncmp(item, name, len) == 0)
			return 1;
		item += item_len;
		if (*item == ',')
			item++;
	}
	return 0;
}

static int check_qpu(int val, const char *optarg, int remote)
{
	const char *name;

	(void) val;
	if (optarg == NULL || optarg[0] == '\0') {
		slurm_error("--qpu: give the QPU name(s), e.g. --qpu=%s",
			    allowed[0] ? allowed : "sim");
		return ESPANK_BAD_ARG;
	}
	if (strlen(optarg) >= sizeof(chosen)) {
		slurm_error("--qpu: value longer than %zu characters",
			    sizeof(chosen) - 1);
		return ESPANK_BAD_ARG;
	}
	/* The remote side trusts what the submitting side accepted: the allowed list may
	 * have changed since the job was submitted. */
	for (name = optarg; !remote;) {
		size_t len = strcspn(name, ",");
		if (!well_formed(name, len)) {
			slurm_error("--qpu: '%.*s' is not a QPU name (letters, digits, '_', '-', '.')",
				    (int) len, name);
			return ESPANK_BAD_ARG;
		}
		if (!is_allowed(name, len)) {
			slurm_error("--qpu: unknown QPU '%.*s' (allowed: %s)",
				    (int) len, name, allowed);
			return ESPANK_BAD_ARG;
		}
		if (name[len] == '\0')
			break;
		name += len + 1;
	}
	snprintf(chosen, sizeof(chosen), "%s", optarg);
	return ESPANK_SUCCESS;
}

int slurm_spank_init(spank_t sp, int ac, char *argv[])
{
	int i;
	spank_err_t rc;

	for (i = 0; i < ac; i++) {
		if (strncmp(argv[i], "allowed=", 8) == 0) {
			/* Cut short, the last name would become an allowed prefix of itself. */
			if (snprintf(allowed, sizeof(allowed), "%s", argv[i] + 8)
			    >= (int) sizeof(allowed)) {
				slurm_error("qhpc_qpu: allowed= is longer than %zu characters; "
					    "shorten the QPU list in plugstack.conf",
					    sizeof(allowed) - 1);
				return ESPANK_ERROR;  /* before --qpu is registered */
			}
		} else {
			slurm_error("qhpc_qpu: unknown plugstack argument '%s' (expected allowed=NAME[,NAME])",
				    argv[i]);
			return ESPANK_ERROR;
		}
	}
	snprintf(usage, sizeof(usage), "QPU(s) for this job (qhpc)%s%s",
		 allowed[0] ? "; one or more of: " : "", allowed);
	rc = spank_option_register(sp, &qpu_option);
	if (rc != ESPANK_SUCCESS) {
		slurm_error("qhpc_qpu: cannot register --qpu: %s", spank_strerror(rc));
		return rc;
	}
	return ESPANK_SUCCESS;
}

/* Submitting side: hand the choice to the hooks through the job's SPANK environment. */
int slurm_spank_init_post_opt(spank_t sp, int ac, char *argv[])
{
	spank_context_t ctx = spank_context();
	spank_err_t rc;

	(void) ac;
	(void) argv;
	if (chosen[0] == '\0' || (ctx != S_CTX_LOCAL && ctx != S_CTX_ALLOCATOR))
		return ESPANK_SUCCESS;
	rc = spank_job_control_setenv(sp, ENV_NAME, chosen, 1);
	if (rc != ESPANK_SUCCESS) {
		slurm_error("qhpc_qpu: cannot pass --qpu to the job: %s", spank_strerror(rc));
		return rc;
	}
	return ESPANK_SUCCESS;
}

/* Node side: put the choice into the environment of the job's tasks. */
int slurm_spank_user_init(spank_t sp, int ac, char *argv[])
{
	spank_err_t rc;

	(void) ac;
	(void) argv;
	if (chosen[0] == '\0' || !spank_remote(sp))
		return ESPANK_SUCCESS;
	rc = spank_setenv(sp, ENV_NAME, chosen, 1);
	if (rc != ESPANK_SUCCESS) {
		slurm_error("qhpc_qpu: cannot set %s: %s", ENV_NAME, spank_strerror(rc));
		return rc;
	}
	return ESPANK_SUCCESS;
}
