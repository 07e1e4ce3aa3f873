-- Argo CD health check for grpo.dev/GRPOJob.
--
-- Install it in argocd-cm as resource.customizations.health.grpo.dev_GRPOJob
-- (see README "GitOps"). It reads status.conditions, which the operator always
-- writes as the full list (Failed, Succeeded, Suspended, Training, InferenceReady,
-- Created), status.observedGeneration, and bestValScore/bestStep for the message.
--
--   Failed=True                      -> Degraded    (backoffLimit, deadline, ...)
--   Succeeded=True                   -> Healthy
--   Suspended=True                   -> Suspended   (spec.suspend)
--   Created=False on a bad spec, a missing Secret/claim or a refused pod,
--   or a pod that cannot start (image pull, config error, crash loop)
--                                    -> Degraded    (needs a human)
--   anything else (creating, scheduling, waiting for Kueue, vLLM starting,
--   training, restarting after a failure)
--                                    -> Progressing
--
-- A running job is Progressing, as Argo CD shows a running batch Job: it becomes
-- Healthy when it has succeeded. Only base and table functions are used, so the
-- check runs with Argo CD's default (useOpenLibs off: no string library).

local hs = {}

-- Reasons (from the operator) that will not resolve without a change by someone.
local stuck = {
  InvalidSpec = true,
  MissingReference = true,
  CreateFailed = true,
  ErrImagePull = true,
  ImagePullBackOff = true,
  InvalidImageName = true,
  ErrImageNeverPull = true,
  CreateContainerConfigError = true,
  CreateContainerError = true,
  RunContainerError = true,
  CrashLoopBackOff = true,
}

local function find(conditions, ctype)
  for _, c in ipairs(conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c)
  local reason = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    return reason .. ": " .. c.message
  end
  return reason
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local conditions = status.conditions
local failed = find(conditions, "Failed")
local succeeded = find(conditions, "Succeeded")
local suspended = find(conditions, "Suspended")
local training = find(conditions, "Training")
local inference = find(conditions, "InferenceReady")
local created = find(conditions, "Created")

if is_true(failed) then
  hs.status = "Degraded"
  hs.message = describe(failed)
  return hs
end

if is_true(succeeded) then
  hs.status = "Healthy"
  hs.message = describe(succeeded)
  if status.bestValScore ~= nil then
    hs.message = hs.message .. " (best validation score " .. status.bestValScore
    if status.bestStep ~= nil then
      hs.message = hs.message .. " at step " .. status.bestStep
    end
    hs.message = hs.message .. ")"
  end
  return hs
end

if is_true(suspended) then
  hs.status = "Suspended"
  hs.message = describe(suspended)
  return hs
end

for _, c in ipairs({ created, training, inference }) do
  if c ~= nil and c.status == "False" and stuck[c.reason] then
    hs.status = "Degraded"
    hs.message = describe(c)
    return hs
  end
end

hs.status = "Progressing"
if is_true(training) then
  hs.message = describe(training)
  if inference ~= nil and inference.status == "False" then
    -- the trainer waits for vLLM (starting, or recreated after it was lost)
    hs.message = hs.message .. "; " .. describe(inference)
  end
elseif training ~= nil and training.status == "False" and training.reason ~= "Creating" then
  hs.message = describe(training)
elseif inference ~= nil and inference.status == "False" then
  hs.message = describe(inference)
elseif created ~= nil then
  hs.message = describe(created)
else
  hs.message = "Waiting for the operator"
end
return hs
