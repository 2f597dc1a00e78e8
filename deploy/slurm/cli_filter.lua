--[[
qhpc's cli_filter for sbatch, salloc and srun: /etc/slurm/cli_filter.lua (next to
slurm.conf), active with `CliFilterPlugins=cli_filter/lua` in slurm.conf or an Included
fragment. Optional: without it, `--qpu=NAME` jobs must also give `-L qpu_NAME`.

`--qpu=NAME[,NAME]` (the qhpc_qpu SPANK option) also requests one licence qpu_NAME per
named QPU, so `--qpu=sim` alone is counted like `-L qpu_sim:1`. A count the user gave
with -L for the same licence wins. A step launched inside an existing allocation
(srun in a job) is left alone: the job already holds its licences.

The SPANK plugin has already checked the names when this runs (option parsing comes
first), so the names here are known QPUs.
--]]

local function split_commas(text)
    local items = {}
    for item in string.gmatch(text or "", "[^,]+") do
        table.insert(items, item)
    end
    return items
end

-- The licence names already requested with -L ("a:1,b*2,c" -> {a=true, b=true, c=true}):
-- Slurm takes NAME, NAME:COUNT and NAME*COUNT.
local function requested_licences(licences)
    local names = {}
    for _, item in ipairs(split_commas(licences)) do
        local name = string.match(item, "^([^:*]+)")
        if name ~= nil then
            names[name] = true
        end
    end
    return names
end

function slurm_cli_setup_defaults(options, early_pass)
    return slurm.SUCCESS
end

function slurm_cli_pre_submit(options, offset)
    local plugin_options = options["spank"] and options["spank"]["qhpc_qpu"]
    local qpus = plugin_options and plugin_options["qpu"]
    if qpus == nil or qpus == "" then
        return slurm.SUCCESS
    end
    if options["type"] == "srun" and options["jobid"] ~= nil then
        return slurm.SUCCESS
    end
    local licences = options["licenses"]
    local have = requested_licences(licences)
    local wanted = {}
    if licences ~= nil and licences ~= "" then
        table.insert(wanted, licences)
    end
    for _, qpu in ipairs(split_commas(qpus)) do
        local licence = "qpu_" .. qpu
        if not have[licence] then
            have[licence] = true
            table.insert(wanted, licence .. ":1")
        end
    end
    options["licenses"] = table.concat(wanted, ",")
    return slurm.SUCCESS
end

function slurm_cli_post_submit(offset, jobid, stepid)
    return slurm.SUCCESS
end
