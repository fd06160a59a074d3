// Alerts on certroll's own telemetry: an action group and five log search alert rules
// over the custom metrics the Function App sends to Application Insights (the Azure
// Monitor OpenTelemetry distro; table customMetrics, dimensions in customDimensions).
// docs/operations.md says what each rule means and what to do when it fires.
// Types: Microsoft.Insights/actionGroups@2023-01-01, scheduledQueryRules@2023-12-01.

@description('Azure region of the alert rules (the action group is global).')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Unique suffix for resource names.')
param resourceToken string

@description('Name of the Application Insights resource the rules query.')
param applicationInsightsName string

@description('E-mail addresses the action group notifies (none: no e-mail receiver).')
param alertEmailAddresses array = []

// A webhook URL may carry a token in its query string: it is a secure parameter, never
// a literal in the templates or the parameters file.
@secure()
@description('HTTPS webhook the action group calls with the common alert schema (empty: none).')
param alertWebhookUrl string = ''

@minValue(1)
@description('Days before a CA certificate expires when its alert fires (the sweep warns from CERTROLL_CA_WARNING_DAYS too).')
param caWarningDays int

@minValue(1)
@description('Rotation failures within an hour that fire the rotation-failure alert.')
param rotationFailureThreshold int = 1

@minValue(1)
@description('Throttled service calls (429/503) within 15 minutes that count as a storm.')
param throttleStormThreshold int = 100

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: 'ag-certroll-${resourceToken}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'certroll'
    enabled: true
    emailReceivers: [for (address, i) in alertEmailAddresses: {
      name: 'email-${i}'
      emailAddress: address
      useCommonAlertSchema: true
    }]
    webhookReceivers: empty(alertWebhookUrl) ? [] : [
      {
        name: 'webhook'
        serviceUri: alertWebhookUrl
        useCommonAlertSchema: true
      }
    ]
  }
}

// One entry per rule: name, severity, how often it runs over which window, the query,
// the measured column, how it is aggregated and compared, and the dimension it splits on.
var rules = [
  {
    name: 'rotation-failures'
    displayName: 'certroll: rotations failed'
    description: 'A device rotation ended in failed (certroll.rotations outcome=failed), split by error code.'
    severity: 2
    frequency: 'PT15M'
    window: 'PT1H'
    query: '''
customMetrics
| where name == "certroll.rotations" and tostring(customDimensions.outcome) == "failed"
| extend code = tostring(customDimensions.code)
| summarize failures = sum(valueSum) by code
'''
    measure: 'failures'
    aggregation: 'Total'
    operator: 'GreaterThanOrEqual'
    threshold: rotationFailureThreshold
    dimension: 'code'
  }
  {
    name: 'renewal-deadline'
    displayName: 'certroll: devices past their renewal deadline'
    description: 'The latest fleet gauges (daily sweep) count devices that are late (renewal point plus the rotation deadline passed) or overdue (certificate expired).'
    severity: 1
    frequency: 'PT1H'
    window: 'P2D'
    query: '''
customMetrics
| where name == "certroll.devices_by_status"
| extend status = tostring(customDimensions.status)
| where status in ("late", "overdue")
| summarize arg_max(timestamp, value) by status
| project status, devices = value
'''
    measure: 'devices'
    aggregation: 'Maximum'
    operator: 'GreaterThan'
    threshold: 0
    dimension: 'status'
  }
  {
    name: 'ca-expiry'
    displayName: 'certroll: CA certificate inside its warning window'
    description: 'The latest fleet gauges (daily sweep) give a CA certificate (issuing, intermediate or root) fewer days than the warning window.'
    severity: 2
    frequency: 'PT6H'
    window: 'P2D'
    query: '''
customMetrics
| where name == "certroll.ca.days_to_expiry"
| extend ca = tostring(customDimensions.ca)
| summarize arg_max(timestamp, value) by ca
| project ca, days_left = value
'''
    measure: 'days_left'
    aggregation: 'Minimum'
    operator: 'LessThanOrEqual'
    threshold: caWarningDays
    dimension: 'ca'
  }
  {
    name: 'throttle-storm'
    displayName: 'certroll: storm of throttled calls'
    description: 'Service calls answered 429/503 (certroll.throttled), split by service (iothub, dps, ledger, state, audit, queue, crl, events, issuer).'
    severity: 2
    frequency: 'PT5M'
    window: 'PT15M'
    query: '''
customMetrics
| where name == "certroll.throttled"
| extend service = tostring(customDimensions.service)
| summarize throttled = sum(valueSum) by service
'''
    measure: 'throttled'
    aggregation: 'Total'
    operator: 'GreaterThanOrEqual'
    threshold: throttleStormThreshold
    dimension: 'service'
  }
  {
    name: 'poison-messages'
    displayName: 'certroll: work messages poisoned'
    description: 'A rotation work message failed its last try; the host moved it to the poison queue.'
    severity: 2
    frequency: 'PT15M'
    window: 'PT1H'
    query: '''
customMetrics
| where name == "certroll.work_messages_poisoned"
| extend reason = tostring(customDimensions.reason)
| summarize poisoned = sum(valueSum) by reason
'''
    measure: 'poisoned'
    aggregation: 'Total'
    operator: 'GreaterThanOrEqual'
    threshold: 1
    dimension: 'reason'
  }
  {
    name: 'campaign-aborted'
    displayName: 'certroll: re-issue campaign aborted'
    description: 'A campaign stopped enqueuing: its failure rate passed its abort criteria, or an operator aborted it (certroll.campaign_aborted), split by reason (manual, compromise, ca-roll).'
    severity: 1
    frequency: 'PT15M'
    window: 'PT1H'
    query: '''
customMetrics
| where name == "certroll.campaign_aborted"
| extend reason = tostring(customDimensions.reason)
| summarize aborted = sum(valueSum) by reason
'''
    measure: 'aborted'
    aggregation: 'Total'
    operator: 'GreaterThanOrEqual'
    threshold: 1
    dimension: 'reason'
  }
]

resource alertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for rule in rules: {
  name: 'alert-certroll-${rule.name}-${resourceToken}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: rule.displayName
    description: rule.description
    severity: rule.severity
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: rule.frequency
    windowSize: rule.window
    criteria: {
      allOf: [
        {
          query: rule.query
          timeAggregation: rule.aggregation
          metricMeasureColumn: rule.measure
          operator: rule.operator
          threshold: rule.threshold
          dimensions: [
            {
              name: rule.dimension
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}]

output ACTION_GROUP_ID string = actionGroup.id
output ALERT_RULE_NAMES array = [for (rule, i) in rules: alertRules[i].name]
